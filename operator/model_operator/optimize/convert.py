"""Conversion of a (clipped, pruned) torch module to ONNX, with dynamic batch and sequence
axes and the opset from `spec.conversion`, or to TorchScript."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..api.types import Conversion, ModelFormat, TensorSpec
from .errors import InputError, OptimizationError, first_line
from .quiet import captured
from .signature import dynamic_axes, is_integer


def axis_names(t: TensorSpec, axes: Sequence[int], *, is_input: bool) -> dict[int, str]:
    names = {}
    for a in axes:
        if a == 0:
            names[a] = "batch"
        elif a == 1 and is_input and is_integer(t):
            names[a] = "sequence"
        else:
            names[a] = f"{t.name}_dim{a}"
    return names


def export_onnx(
    kind: str,
    module: Any,
    path: Path,
    *,
    inputs: Sequence[TensorSpec],
    outputs: Sequence[TensorSpec],
    conversion: Conversion,
    sample: dict[str, np.ndarray],
) -> Path:
    """Export `module` to ONNX at `path`. TorchScript modules go through the TorchScript-based
    exporter; torch.export programs through the torch.export-based one."""
    import torch

    args = tuple(torch.from_numpy(np.ascontiguousarray(sample[t.name])) for t in inputs)
    in_names = [t.name for t in inputs]
    out_names = [t.name for t in outputs]
    try:
        with captured():
            if kind == ModelFormat.torchscript.value:
                dyn = {t.name: axis_names(t, dynamic_axes(t, conversion, is_input=True), is_input=True) for t in inputs}
                dyn.update({t.name: axis_names(t, dynamic_axes(t, conversion, is_input=False), is_input=False) for t in outputs})
                torch.onnx.export(
                    module, args, str(path), dynamo=False, input_names=in_names, output_names=out_names,
                    dynamic_axes={k: v for k, v in dyn.items() if v}, opset_version=conversion.opset, do_constant_folding=True,
                )
            else:
                shapes = tuple(
                    {a: torch.export.Dim.DYNAMIC for a in dynamic_axes(t, conversion, is_input=True)} or None for t in inputs
                )
                # Names are set afterwards: the exporter can give an output the name of an
                # internal tensor (an output called "embedding" next to an aten.embedding node).
                torch.onnx.export(module, args, str(path), dynamo=True, dynamic_shapes=shapes, opset_version=conversion.opset, external_data=False)
        rename_io(path, in_names, out_names)
    except Exception as exc:  # noqa: BLE001 - exporter errors are many and varied
        raise OptimizationError("spec.conversion", f"ONNX export failed: {first_line(exc)}") from None
    return path


def rename_tensor(graph: Any, old: str, new: str) -> None:
    """Rename a tensor everywhere in `graph` (node inputs/outputs, graph inputs/outputs,
    initializers, value_info)."""
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = new
        for i, name in enumerate(node.output):
            if name == old:
                node.output[i] = new
    for coll in (graph.input, graph.output, graph.value_info, graph.initializer):
        for item in coll:
            if item.name == old:
                item.name = new


def rename_io(path: Path, inputs: Sequence[str], outputs: Sequence[str]) -> None:
    """Give the graph's inputs and outputs these names (in order), moving any internal tensor that
    already has one of them out of the way first; checks the result."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    g = model.graph
    inits = {i.name for i in g.initializer}
    current = [i.name for i in g.input if i.name not in inits] + [o.name for o in g.output]
    wanted = list(inputs) + list(outputs)
    if len(current) != len(wanted):
        raise OptimizationError("spec.conversion", f"the exported graph has {len(current)} inputs+outputs, the signature {len(wanted)}")
    if current != wanted:
        taken = {n for node in g.node for n in (*node.input, *node.output)} | inits | set(current) | {v.name for v in g.value_info}
        for cur, want in zip(current, wanted):
            if cur == want:
                continue
            if want in taken:
                alt, k = f"{want}__internal", 0
                while alt in taken:
                    k += 1
                    alt = f"{want}__internal{k}"
                rename_tensor(g, want, alt)
                taken.add(alt)
            rename_tensor(g, cur, want)
            taken.add(want)
        onnx.save(model, str(path))
    onnx.checker.check_model(str(path))


def save_torchscript(kind: str, module: Any, path: Path) -> Path:
    import torch

    if kind != ModelFormat.torchscript.value:
        raise InputError(
            "spec.conversion.format",
            "a torch.export (.pt2) model converts to ONNX only (TorchScript tracing would fix its dynamic axes): set conversion.format: onnx",
        )
    with captured():
        torch.jit.save(module, str(path))
    return path

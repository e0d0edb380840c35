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
                torch.onnx.export(
                    module, args, str(path), dynamo=True, input_names=in_names, output_names=out_names,
                    dynamic_shapes=shapes, opset_version=conversion.opset, external_data=False,
                )
    except Exception as exc:  # noqa: BLE001 - exporter errors are many and varied
        raise OptimizationError("spec.conversion", f"ONNX export failed: {first_line(exc)}") from None
    return path


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

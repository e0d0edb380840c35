"""Load the source model (ONNX, TorchScript, torch.export `.pt2`) and establish its signature.

The signature comes from the model where it carries one (ONNX graph inputs/outputs, the
placeholders of an ExportedProgram) and from `spec.model.inputs/outputs` otherwise
(TorchScript); spec entries override what the model leaves open and contradictions are
InputErrors naming the spec field. Every load failure (truncated file, random bytes,
unsupported operator) is an InputError naming `spec.model.uri` and the file.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..api.types import DType, ModelFormat, ModelSource, TensorSpec
from .errors import InputError, first_line
from .quiet import captured
from .signature import (
    ONNX_DTYPES,
    ONNX_TYPE_NAMES,
    describe,
    dtype_of_numpy,
    merge_inputs,
    sample_feeds,
)

FIELD_URI = "spec.model.uri"
# Operator domains ONNX Runtime implements besides the standard one.
KNOWN_DOMAINS = {"", "ai.onnx", "ai.onnx.ml", "com.microsoft", "com.microsoft.nchwc", "com.microsoft.experimental", "ai.onnx.training",
                 "ai.onnx.preview.training"}


@dataclass
class SourceModel:
    """The loaded source. `kind` is the ModelFormat value. For torch kinds, `fresh()` returns a
    new module (changes to one copy never leak into another candidate)."""

    kind: str
    path: Path
    uri: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    onnx_model: Any = None
    fresh: Callable[[], Any] | None = None
    exported: Any = None
    extra: dict[str, Any] = field(default_factory=dict)

    def load_fresh(self) -> Any:
        """A new copy of the torch module (torch kinds only)."""
        if self.fresh is None:
            raise TypeError(f"{self.kind} source has no torch module to load")
        return self.fresh()

    @property
    def is_torch(self) -> bool:
        return self.kind != ModelFormat.onnx.value

    @property
    def size_bytes(self) -> int:
        return self.path.stat().st_size


def guess_format(path: Path, uri: str, declared: ModelFormat | None) -> ModelFormat:
    if declared is not None:
        return declared
    name = uri.lower().split("?", 1)[0]
    if name.endswith(".onnx"):
        return ModelFormat.onnx
    if name.endswith(".pt2"):
        return ModelFormat.torch_export
    if name.endswith((".pt", ".pth", ".ts", ".torchscript", ".jit")):
        return ModelFormat.torchscript
    # No telling extension: look inside. Both torch formats are zip archives.
    if zipfile.is_zipfile(path):
        try:
            names = zipfile.ZipFile(path).namelist()
        except zipfile.BadZipFile:
            names = []
        if any("serialized_exported_program" in n or n.endswith("archive_format") for n in names):
            return ModelFormat.torch_export
        return ModelFormat.torchscript
    return ModelFormat.onnx


MAX_UNPACKED_ENV = "MODEL_OPERATOR_MAX_UNPACKED_BYTES"
DEFAULT_MAX_UNPACKED = 16 << 30  # 16 GiB


def check_archive(path: Path, uri: str) -> None:
    """Torch formats are zip archives; one that would expand to more than the limit (a zip
    bomb, or a model far bigger than any worker can hold) is refused before anything reads it."""
    if not zipfile.is_zipfile(path):
        return
    limit = int(os.environ.get(MAX_UNPACKED_ENV) or DEFAULT_MAX_UNPACKED)
    try:
        total = sum(info.file_size for info in zipfile.ZipFile(path).infolist())
    except (zipfile.BadZipFile, OSError):
        return  # the loader says what is wrong with it
    if total > limit:
        raise InputError(FIELD_URI, f"{uri}: the archive expands to {total} bytes, more than the {limit}-byte limit ({MAX_UNPACKED_ENV})")


def load_source(path: Path, source: ModelSource, data: dict[str, np.ndarray] | None) -> SourceModel:
    """Load and check the model at `path` (fetched from `source.uri`). `data` (validation
    inputs by name, when there are any) gives realistic values for the trial run."""
    check_archive(path, source.uri)
    fmt = guess_format(path, source.uri, source.format)
    if fmt == ModelFormat.onnx:
        model = _load_onnx(path, source)
    elif fmt == ModelFormat.torchscript:
        model = _load_torchscript(path, source, data)
    else:
        model = _load_exported(path, source, data)
    return model


# --- ONNX -------------------------------------------------------------------------------------


def onnx_signature(model: Any, uri: str = "model file") -> tuple[list[TensorSpec], list[TensorSpec]]:
    """(inputs, outputs) of an ONNX ModelProto: graph inputs that are not initializers, dynamic or
    unnamed dimensions as -1; a type the worker can't serve is an InputError naming `uri`."""
    inits = {i.name for i in model.graph.initializer}
    ins = [_onnx_tensor(vi, uri) for vi in model.graph.input if vi.name not in inits]
    return ins, [_onnx_tensor(vi, uri) for vi in model.graph.output]


def _onnx_tensor(vi: Any, uri: str) -> TensorSpec:
    tt = vi.type.tensor_type
    if not vi.type.HasField("tensor_type"):
        raise InputError(FIELD_URI, f"{uri}: '{vi.name}' is not a tensor (sequences and maps are not supported)")
    dtype = ONNX_DTYPES.get(tt.elem_type)
    if dtype is None:
        tname = ONNX_TYPE_NAMES.get(tt.elem_type, str(tt.elem_type))
        raise InputError(FIELD_URI, f"{uri}: tensor '{vi.name}' has type {tname}, which is not supported ({', '.join(d.value for d in DType)})")
    shape = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else -1 for d in tt.shape.dim]
    return TensorSpec(name=vi.name, dtype=dtype, shape=shape or [1])


def unsupported_nodes(model: Any) -> list[str]:
    """`domain:op (node 'name')` for nodes no schema or ONNX Runtime domain knows."""
    import onnx

    bad = []
    for node in model.graph.node:
        domain = node.domain or ""
        if domain in ("", "ai.onnx"):
            if not onnx.defs.has(node.op_type):
                bad.append(f"{node.op_type} (node '{node.name}')")
        elif domain not in KNOWN_DOMAINS:
            bad.append(f"{domain}:{node.op_type} (node '{node.name}')")
    return bad


def _load_onnx(path: Path, source: ModelSource) -> SourceModel:
    import onnx
    import onnxruntime as ort

    uri = source.uri
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - protobuf DecodeError and friends
        raise InputError(FIELD_URI, f"{uri}: not a valid ONNX model, the file is corrupt or truncated ({type(exc).__name__})") from None
    if not model.graph.node or not model.graph.output:
        raise InputError(FIELD_URI, f"{uri}: not a valid ONNX model, no graph in the file (corrupt or truncated?)")
    if any(init.data_location == onnx.TensorProto.EXTERNAL for init in model.graph.initializer):
        raise InputError(FIELD_URI, f"{uri}: the model keeps its weights in external data files, which are not fetched: save it as one .onnx file")
    bad = unsupported_nodes(model)
    if bad:
        raise InputError(FIELD_URI,
                         f"{uri}: unsupported operator {bad[0]}: neither ONNX nor ONNX Runtime defines it"
                         + (f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""))
    try:
        onnx.checker.check_model(model)
    except Exception as exc:  # noqa: BLE001 - onnx.checker.ValidationError
        raise InputError(FIELD_URI, f"{uri}: invalid ONNX model: {first_line(exc)}") from None
    try:
        so = ort.SessionOptions()
        so.log_severity_level = 3
        ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own Fail/NotImplemented types
        raise InputError(FIELD_URI, f"{uri}: ONNX Runtime cannot load the model: {first_line(exc)}") from None
    model_inputs, model_outputs = onnx_signature(model, uri)
    inputs = merge_inputs(model_inputs, source.inputs, by_name=True)
    outputs = _merge_outputs(model_outputs, source.outputs, by_name=True)
    return SourceModel(kind=ModelFormat.onnx.value, path=path, uri=uri, inputs=inputs, outputs=outputs, onnx_model=model)


def _merge_outputs(model: Sequence[TensorSpec], spec: Sequence[TensorSpec] | None, *, by_name: bool) -> list[TensorSpec]:
    if not spec:
        return list(model)
    field_name = "spec.model.outputs"
    if len(spec) != len(model):
        raise InputError(field_name, f"lists {len(spec)} outputs but the model has {len(model)} ({', '.join(describe(t) for t in model)})")
    out = []
    for i, (s, m) in enumerate(zip(spec, model)):
        if by_name and s.name != m.name:
            raise InputError(f"{field_name}[{i}].name", f"'{s.name}' is not an output of the model (the model's outputs: {', '.join(t.name for t in model)})")
        if DType(s.dtype) != DType(m.dtype):
            raise InputError(f"{field_name}[{i}].dtype", f"'{s.name}' is {DType(s.dtype).value} in the spec but {DType(m.dtype).value} in the model")
        if len(s.shape) != len(m.shape):
            raise InputError(f"{field_name}[{i}].shape", f"'{s.name}' has rank {len(s.shape)} in the spec but {len(m.shape)} in the model {list(m.shape)}")
        for axis, (sd, md) in enumerate(zip(s.shape, m.shape)):
            if sd != -1 and md != -1 and sd != md:
                raise InputError(f"{field_name}[{i}].shape", f"'{s.name}' axis {axis} is {sd} in the spec but {md} in the model")
        out.append(TensorSpec(name=s.name, dtype=s.dtype, shape=[sd if sd != -1 else md for sd, md in zip(s.shape, m.shape)]))
    return out


# --- torch ------------------------------------------------------------------------------------


def torch_outputs(result: Any) -> list[Any]:
    """A module's result as a flat list of tensors (a tensor, a tuple/list of tensors)."""
    import torch

    if isinstance(result, torch.Tensor):
        return [result]
    if isinstance(result, (list, tuple)) and all(isinstance(r, torch.Tensor) for r in result):
        return list(result)
    raise InputError(FIELD_URI, f"the model returns {type(result).__name__}; a tensor or a tuple of tensors is supported")


def run_torch(module: Any, inputs: Sequence[TensorSpec], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    import torch

    args = [torch.from_numpy(np.ascontiguousarray(feeds[t.name])) for t in inputs]
    with torch.inference_mode():
        out = module(*args)
    return [o.detach().float().numpy() if o.dtype == torch.bfloat16 else o.detach().numpy() for o in torch_outputs(out)]


def _torch_output_specs(module: Any, inputs: list[TensorSpec], data: dict[str, np.ndarray] | None,
                        spec_outputs: Sequence[TensorSpec] | None) -> list[TensorSpec]:
    """Outputs from trial runs: dtype and shape from a run on sample inputs; the axes that change
    when the dynamic input axes change are dynamic (-1)."""
    try:
        feeds = sample_feeds(inputs, data)
        first = run_torch(module, inputs, feeds)
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - whatever the model raises on a bad signature
        raise InputError("spec.model.inputs", f"the model fails on inputs shaped like {'; '.join(describe(t) for t in inputs)}: {first_line(exc)}") from None
    # A second run with every dynamic non-batch axis one longer and batch one larger shows which output axes follow.
    varied = {}
    for t in inputs:
        arr = feeds[t.name]
        pads = [(0, 1) if (d == -1) else (0, 0) for d in t.shape]
        varied[t.name] = np.pad(arr, pads, mode="edge")
    try:
        second = run_torch(module, inputs, varied)
    except Exception:  # noqa: BLE001 - a model that only takes one sequence length keeps static shapes
        second = first
    specs = []
    for i, (a, b) in enumerate(zip(first, second)):
        dtype = dtype_of_numpy(a.dtype)
        if dtype is None:
            raise InputError(FIELD_URI, f"output {i} has dtype {a.dtype}, which is not supported")
        shape = [(-1 if (da != db or axis == 0 and inputs[0].shape[0] == -1) else da) for axis, (da, db) in enumerate(zip(a.shape, b.shape))]
        name = f"output_{i}" if len(first) > 1 else "output"
        specs.append(TensorSpec(name=name, dtype=dtype, shape=shape or [1]))
    if spec_outputs:
        return _merge_outputs(specs, spec_outputs, by_name=False)
    return specs


def _load_torchscript(path: Path, source: ModelSource, data: dict[str, np.ndarray] | None) -> SourceModel:
    import torch

    uri = source.uri

    def fresh() -> Any:
        with captured():
            module = torch.jit.load(str(path), map_location="cpu")
        module.eval()
        return module

    try:
        module = fresh()
    except Exception as exc:  # noqa: BLE001 - RuntimeError from the archive reader
        raise InputError(FIELD_URI, f"{uri}: not a TorchScript archive, the file is corrupt or truncated ({first_line(exc)})") from None
    try:
        args = [a for a in module.forward.schema.arguments[1:]]
    except Exception:  # noqa: BLE001 - a scripted module without a readable schema has no named arguments
        args = []
    if not source.inputs:
        names = ", ".join(a.name for a in args) or "?"
        raise InputError("spec.model.inputs",
                         f"a TorchScript model does not carry its input shapes: list its inputs ({names}) with dtype and shape, -1 for dynamic axes")
    required = [a for a in args if a.default_value is None]
    if args and not len(required) <= len(source.inputs) <= len(args):
        raise InputError("spec.model.inputs",
                         f"lists {len(source.inputs)} inputs but the model's forward takes {len(required)} ({', '.join(a.name for a in args)})")
    inputs = list(source.inputs)
    outputs = _torch_output_specs(module, inputs, data, source.outputs)
    return SourceModel(kind=ModelFormat.torchscript.value, path=path, uri=uri, inputs=inputs, outputs=outputs, fresh=fresh)


def _load_exported(path: Path, source: ModelSource, data: dict[str, np.ndarray] | None) -> SourceModel:
    import torch

    uri = source.uri

    def load() -> Any:
        with captured():
            return torch.export.load(str(path))

    try:
        ep = load()
    except Exception as exc:  # noqa: BLE001 - torch.export.load raises many classes for a corrupt archive
        raise InputError(FIELD_URI, f"{uri}: not a torch.export (.pt2) archive, the file is corrupt or truncated ({first_line(exc)})") from None
    user_inputs = list(ep.graph_signature.user_inputs)
    model_inputs: list[TensorSpec] = []
    for node in ep.graph.nodes:
        if node.op == "placeholder" and node.name in user_inputs:
            val = node.meta.get("val")
            dtype = dtype_of_numpy(torch.empty(0, dtype=val.dtype).numpy().dtype) if val is not None else None
            if dtype is None:
                raise InputError(FIELD_URI, f"{uri}: input '{node.name}' has an unsupported dtype")
            shape = [int(d) if isinstance(d, int) else -1 for d in val.shape]
            model_inputs.append(TensorSpec(name=node.name, dtype=dtype, shape=shape or [1]))
    inputs = merge_inputs(model_inputs, source.inputs, by_name=False)

    def fresh() -> Any:
        with captured():
            program = load()
            return program.module()

    module = ep.module()
    outputs = _torch_output_specs(module, inputs, data, source.outputs)
    return SourceModel(kind=ModelFormat.torch_export.value, path=path, uri=uri, inputs=inputs, outputs=outputs, fresh=fresh, exported=ep)


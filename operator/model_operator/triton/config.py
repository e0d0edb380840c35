"""`config.pbtxt` generation: a model's signature + the serving block + the target -> Triton's
model configuration, as text that parses into `ModelConfig`.

Pure: no files, no processes. The config is built as a real `ModelConfig` protobuf (the message
Triton itself parses) and printed with `google.protobuf.text_format`, so a field name or an
enum value that Triton would refuse cannot be written.

Rules:
- platform/backend follow the artifact format (`onnx` -> `onnxruntime_onnx`, `torchscript` ->
  `pytorch_libtorch`) unless `backend: python` asks for the Python backend, which runs the ONNX
  file with ONNX Runtime inside Triton (`repository.write_repository` writes its `model.py`).
- `max_batch_size` is `serving.maxBatchSize` when every input and output has a dynamic first
  axis (-1); the batch axis is then left out of `dims`. A model with a fixed first axis cannot
  be batched by Triton: `max_batch_size` is 0 and `dims` are the full shapes.
- `dynamic_batching` (preferred sizes no larger than max_batch_size, queue delay) when enabled
  and max_batch_size > 0.
- `instance_group`: KIND_GPU on the GPUs `0..gpus-1` for a cloud target with `serving.gpus > 0`,
  else KIND_CPU; `count` is `serving.instanceCount`.
- ONNX Runtime's intra-op threads per instance when `serving.intraOpThreads` is set: the
  `intra_op_thread_count` parameter of the onnxruntime backend, `intra_op_threads` of our
  Python-backend model (pytorch ignores it).
- the ONNX Runtime TensorRT execution accelerator with FP16 precision when
  `serving.gpuAccelerator: tensorrt`, the backend is onnxruntime and the instances are on GPUs
  (ignored elsewhere: TensorRT needs a GPU and only the onnxruntime backend takes it).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from ..api.types import Backend, DType, GpuAccelerator, Serving, Target, TensorSpec

ARTIFACT_FORMATS: Final = ("onnx", "torchscript")

# Triton's data type names for our dtypes.
TRITON_DTYPES: Final[dict[DType, str]] = {
    DType.float32: "TYPE_FP32",
    DType.float16: "TYPE_FP16",
    DType.int64: "TYPE_INT64",
    DType.int32: "TYPE_INT32",
    DType.int8: "TYPE_INT8",
    DType.uint8: "TYPE_UINT8",
    DType.bool_: "TYPE_BOOL",
}

# (platform, backend) per effective backend.
_PLATFORMS: Final[dict[Backend, tuple[str, str]]] = {
    Backend.onnxruntime: ("onnxruntime_onnx", "onnxruntime"),
    Backend.pytorch: ("pytorch_libtorch", "pytorch"),
    Backend.python: ("", "python"),
}

# Parameters the Python-backend model.py reads from its config.
PYTHON_MODEL_FILE_PARAM: Final = "onnx_file"
PYTHON_THREADS_PARAM: Final = "intra_op_threads"
# The parameter Triton's onnxruntime backend reads for ONNX Runtime's intra-op thread pool.
ORT_BACKEND_THREADS_PARAM: Final = "intra_op_thread_count"
DEFAULT_ONNX_FILE: Final = "model.onnx"


class ConfigError(ValueError):
    """A serving choice that cannot work with this artifact (e.g. backend pytorch for an ONNX file)."""


def model_filename(artifact_format: str, backend: Backend | str | None = None) -> str:
    """The file Triton loads from `<name>/1/` for this format and backend."""
    b = effective_backend(artifact_format, backend)
    if b == Backend.pytorch:
        return "model.pt"
    if b == Backend.python:
        return "model.py"
    return "model.onnx"


def effective_backend(artifact_format: str, backend: Backend | str | None = None) -> Backend:
    """The backend that serves an artifact: the requested one, checked against the format, or the
    format's own (onnx -> onnxruntime, torchscript -> pytorch)."""
    fmt = str(getattr(artifact_format, "value", artifact_format))
    if fmt not in ARTIFACT_FORMATS:
        raise ConfigError(f"artifact format {fmt!r} is not one of {', '.join(ARTIFACT_FORMATS)}")
    wanted = Backend(backend) if backend is not None else None
    if wanted is None:
        return Backend.onnxruntime if fmt == "onnx" else Backend.pytorch
    if wanted in (Backend.onnxruntime, Backend.python) and fmt != "onnx":
        raise ConfigError(f"backend {wanted.value} serves ONNX files; the artifact is {fmt}: set conversion.format: onnx")
    if wanted == Backend.pytorch and fmt != "torchscript":
        raise ConfigError(f"backend pytorch serves TorchScript files; the artifact is {fmt}: set conversion.format: torchscript")
    return wanted


def batchable(inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec]) -> bool:
    """Whether Triton can batch this signature: every tensor has a dynamic first axis."""
    return all(t.shape and t.shape[0] == -1 for t in (*inputs, *outputs))


def _uses_gpu(serving: Serving, target: Target) -> bool:
    return target == Target.cloud and serving.gpus > 0


def _add_tensor(msg: mc.ModelInput | mc.ModelOutput, spec: TensorSpec, strip_batch: bool) -> None:
    msg.name = spec.name
    msg.data_type = mc.DataType.Value(TRITON_DTYPES[DType(spec.dtype)])
    dims = list(spec.shape[1:] if strip_batch else spec.shape)
    if not dims:
        # A [batch] tensor: Triton wants at least one dim; reshape it away.
        msg.dims.append(1)
        msg.reshape.SetInParent()
    else:
        msg.dims.extend(dims)


def build_model_config_proto(
    name: str,
    inputs: Sequence[TensorSpec],
    outputs: Sequence[TensorSpec],
    *,
    artifact_format: str,
    serving: Serving | None,
    target: Target | str,
    backend: Backend | str | None = None,
    warmup: bool = False,
) -> mc.ModelConfig:
    """The `ModelConfig` message behind `build_model_config` (see the module docstring)."""
    if not inputs or not outputs:
        raise ConfigError("the model signature needs at least one input and one output: set model.inputs/outputs")
    names = [t.name for t in (*inputs, *outputs)]
    if len(set(names)) != len(names):
        raise ConfigError(f"tensor names must be unique across inputs and outputs: {names}")
    serving = serving if serving is not None else Serving()
    target = Target(target)
    if backend is None:
        backend = serving.backend
    eff = effective_backend(artifact_format, backend)
    platform, backend_name = _PLATFORMS[eff]

    cfg = mc.ModelConfig(name=name)
    if platform:
        cfg.platform = platform
    cfg.backend = backend_name

    strip = serving.max_batch_size > 0 and batchable(inputs, outputs)
    cfg.max_batch_size = serving.max_batch_size if strip else 0
    for spec in inputs:
        _add_tensor(cfg.input.add(), spec, strip)
    for spec in outputs:
        _add_tensor(cfg.output.add(), spec, strip)

    db = serving.dynamic_batching
    if db.enabled and cfg.max_batch_size > 0:
        cfg.dynamic_batching.SetInParent()
        cfg.dynamic_batching.preferred_batch_size.extend(
            sorted({b for b in db.preferred_batch_sizes if b <= cfg.max_batch_size})
        )
        cfg.dynamic_batching.max_queue_delay_microseconds = db.max_queue_delay_microseconds

    group = cfg.instance_group.add(count=serving.instance_count)
    gpu = _uses_gpu(serving, target)
    if gpu:
        group.kind = mc.ModelInstanceGroup.KIND_GPU
        group.gpus.extend(range(serving.gpus))
    else:
        group.kind = mc.ModelInstanceGroup.KIND_CPU

    if gpu and eff == Backend.onnxruntime and serving.gpu_accelerator == GpuAccelerator.tensorrt:
        acc = cfg.optimization.execution_accelerators.gpu_execution_accelerator.add(name="tensorrt")
        acc.parameters["precision_mode"] = "FP16"
        acc.parameters["max_workspace_size_bytes"] = str(1 << 30)

    if eff == Backend.python:
        cfg.parameters[PYTHON_MODEL_FILE_PARAM].string_value = DEFAULT_ONNX_FILE
    if serving.intra_op_threads is not None and eff in (Backend.python, Backend.onnxruntime):
        key = PYTHON_THREADS_PARAM if eff == Backend.python else ORT_BACKEND_THREADS_PARAM
        cfg.parameters[key].string_value = str(serving.intra_op_threads)

    if warmup:
        w = cfg.model_warmup.add(name="zeros", batch_size=1 if cfg.max_batch_size > 0 else 0, count=1)
        for spec in inputs:
            dims = spec.shape[1:] if strip else spec.shape
            wi = w.inputs[spec.name]
            wi.data_type = mc.DataType.Value(TRITON_DTYPES[DType(spec.dtype)])
            wi.dims.extend([1 if d == -1 else d for d in dims] or [1])
            wi.zero_data = True
    return cfg


def build_model_config(
    name: str,
    inputs: Sequence[TensorSpec],
    outputs: Sequence[TensorSpec],
    *,
    artifact_format: str,
    serving: Serving | None,
    target: Target | str,
    backend: Backend | str | None = None,
    warmup: bool = False,
) -> str:
    """`config.pbtxt` text for a model. `backend` overrides `serving.backend`; both default to the
    format's own backend. Raises ConfigError for a combination that cannot be served."""
    cfg = build_model_config_proto(
        name,
        inputs,
        outputs,
        artifact_format=artifact_format,
        serving=serving,
        target=target,
        backend=backend,
        warmup=warmup,
    )
    return text_format.MessageToString(cfg)


def parse_model_config(text: str) -> mc.ModelConfig:
    """Parse `config.pbtxt` text into Triton's `ModelConfig` (raises text_format.ParseError)."""
    return text_format.Parse(text, mc.ModelConfig())


_DTYPES_BY_TRITON: Final = {v: k for k, v in TRITON_DTYPES.items()}


def read_signature(config_pbtxt: str) -> tuple[list[TensorSpec], list[TensorSpec], int]:
    """(inputs, outputs, max_batch_size) of a config, shapes with the batch axis (-1) put back
    when the model batches: the inverse of `build_model_config` for the signature."""
    cfg = parse_model_config(config_pbtxt)

    def specs(items: Sequence[mc.ModelInput] | Sequence[mc.ModelOutput]) -> list[TensorSpec]:
        out = []
        for t in items:
            dims = [] if t.HasField("reshape") and not t.reshape.shape else list(t.dims)
            shape = ([-1] if cfg.max_batch_size > 0 else []) + dims
            dtype = _DTYPES_BY_TRITON.get(mc.DataType.Name(t.data_type))
            if dtype is None:
                raise ConfigError(f"tensor {t.name}: data type {mc.DataType.Name(t.data_type)} is not supported")
            out.append(TensorSpec(name=t.name, dtype=dtype, shape=shape))
        return out

    return specs(cfg.input), specs(cfg.output), cfg.max_batch_size

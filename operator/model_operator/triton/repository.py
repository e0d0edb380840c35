"""Triton model repository layout.

```
<root>/<name>/config.pbtxt
<root>/<name>/1/model.onnx            backend onnxruntime
<root>/<name>/1/model.pt              backend pytorch (TorchScript)
<root>/<name>/1/model.py + model.onnx backend python (ONNX Runtime inside Triton's Python backend)
```
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from ..api.types import Backend, Serving, Target, TensorSpec
from .config import (
    DEFAULT_ONNX_FILE,
    ORT_BACKEND_THREADS_PARAM,
    PYTHON_MODEL_FILE_PARAM,
    PYTHON_THREADS_PARAM,
    ConfigError,
    build_model_config,
    effective_backend,
    model_filename,
    parse_model_config,
    read_signature,
)

VERSION: Final = "1"
PYTHON_MODEL_SOURCE: Final = Path(__file__).with_name("python_model.py")

__all__ = [
    "VERSION",
    "PYTHON_MODEL_SOURCE",
    "write_repository",
    "read_signature",
    "model_dir",
    "python_model_source",
    "as_python_backend",
]


def python_model_source() -> str:
    """The text of the Python-backend `model.py` that serves an ONNX file with ONNX Runtime."""
    return PYTHON_MODEL_SOURCE.read_text(encoding="utf-8")


def model_dir(root: Path, name: str) -> Path:
    return Path(root) / name


def write_repository(
    root: Path,
    name: str,
    model_file: Path,
    *,
    artifact_format: str,
    inputs: Sequence[TensorSpec],
    outputs: Sequence[TensorSpec],
    serving: Serving | None,
    target: Target | str,
    backend: Backend | str | None = None,
    warmup: bool = False,
) -> Path:
    """Lay out `<root>/<name>/` for Triton (see the module docstring) and return that directory.

    `model_file` is copied (a `.onnx` for formats onnx, a TorchScript `.pt` for torchscript).
    An existing `<root>/<name>/` is replaced. `backend` overrides `serving.backend`.
    Raises config.ConfigError for a format/backend mismatch, FileNotFoundError for a missing file.
    """
    model_file = Path(model_file)
    if not model_file.is_file():
        raise FileNotFoundError(f"model file {model_file} does not exist")
    if backend is None and serving is not None:
        backend = serving.backend
    eff = effective_backend(artifact_format, backend)
    text = build_model_config(
        name,
        inputs,
        outputs,
        artifact_format=artifact_format,
        serving=serving,
        target=target,
        backend=eff,
        warmup=warmup,
    )
    dest = model_dir(Path(root), name)
    if dest.exists():
        shutil.rmtree(dest)
    version = dest / VERSION
    version.mkdir(parents=True)
    (dest / "config.pbtxt").write_text(text, encoding="utf-8")
    if eff == Backend.python:
        shutil.copyfile(model_file, version / DEFAULT_ONNX_FILE)
        (version / "model.py").write_text(python_model_source(), encoding="utf-8")
    else:
        shutil.copyfile(model_file, version / model_filename(artifact_format, eff))
    return dest


def as_python_backend(src: Path, dest_root: Path, *, keep_gpus: bool = False) -> Path:
    """Copy the model directory `src` (`<repo>/<name>/`) to `<dest_root>/<name>/` so that the
    Python backend serves it, and return the new directory.

    The local Triton (nvidia-pytriton's build) has only the Python backend. An ONNX model
    configured for `onnxruntime` keeps its signature, batching and instance count; the platform
    and the GPU execution accelerators go, the onnxruntime backend's intra-op thread count becomes
    the Python model's, and `model.py` is added beside each version's
    `model.onnx`. Unless `keep_gpus`, KIND_GPU instance groups become KIND_CPU (this machine may
    have no GPU). TorchScript cannot be served this way: ConfigError."""
    src = Path(src)
    cfg = parse_model_config((src / "config.pbtxt").read_text(encoding="utf-8"))
    if cfg.backend not in ("onnxruntime", "python", "") or cfg.platform not in ("onnxruntime_onnx", ""):
        raise ConfigError(
            f"{src.name}: backend {cfg.backend or cfg.platform} cannot run on the local Triton, which has only the "
            "Python backend; serve an ONNX artifact (conversion.format: onnx)"
        )
    was_python = cfg.backend == "python"
    cfg.ClearField("platform")
    cfg.backend = "python"
    cfg.ClearField("optimization")
    if not keep_gpus:
        for group in cfg.instance_group:
            if group.kind == mc.ModelInstanceGroup.KIND_GPU:
                group.kind = mc.ModelInstanceGroup.KIND_CPU
                group.ClearField("gpus")
    if not was_python:
        filename = cfg.default_model_filename or DEFAULT_ONNX_FILE
        cfg.ClearField("default_model_filename")
        cfg.parameters[PYTHON_MODEL_FILE_PARAM].string_value = filename
        if ORT_BACKEND_THREADS_PARAM in cfg.parameters:
            threads = cfg.parameters.pop(ORT_BACKEND_THREADS_PARAM).string_value
            cfg.parameters[PYTHON_THREADS_PARAM].string_value = threads
    else:
        filename = cfg.parameters[PYTHON_MODEL_FILE_PARAM].string_value if PYTHON_MODEL_FILE_PARAM in cfg.parameters else DEFAULT_ONNX_FILE
    versions = [p for p in src.iterdir() if p.is_dir() and p.name.isdigit()]
    if not any((v / filename).is_file() for v in versions):
        raise ConfigError(f"{src.name}: no version directory holds {filename}")
    dest = Path(dest_root) / src.name
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    for v in versions:
        shutil.copytree(v, dest / v.name)
        if not (dest / v.name / "model.py").is_file():
            (dest / v.name / "model.py").write_text(python_model_source(), encoding="utf-8")
    (dest / "config.pbtxt").write_text(text_format.MessageToString(cfg), encoding="utf-8")
    return dest

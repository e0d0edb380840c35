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

from ..api.types import Backend, Serving, Target, TensorSpec
from .config import DEFAULT_ONNX_FILE, build_model_config, effective_backend, model_filename, read_signature

VERSION: Final = "1"
PYTHON_MODEL_SOURCE: Final = Path(__file__).with_name("python_model.py")

__all__ = ["VERSION", "PYTHON_MODEL_SOURCE", "write_repository", "read_signature", "model_dir", "python_model_source"]


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

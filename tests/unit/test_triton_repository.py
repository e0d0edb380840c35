"""Repository layout, the Python-backend model.py (loaded and run outside Triton on a real ONNX
model), and the conversion of onnxruntime repositories for the local Triton."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from tritonclient.grpc import model_config_pb2 as mc

from model_operator.api.types import DType, Serving, TensorSpec
from model_operator.triton.config import ConfigError, parse_model_config
from model_operator.triton.repository import PYTHON_MODEL_SOURCE, as_python_backend, python_model_source, write_repository

IN = [TensorSpec(name="x", shape=[-1, 4])]
OUT = [TensorSpec(name="y", shape=[-1, 3])]


def matmul_onnx(path: Path) -> Path:
    w = np.arange(12, dtype=np.float32).reshape(4, 3) / 10
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "matmul",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
        [numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def seq_onnx(path: Path) -> Path:
    """ids [batch, seq] int64 -> mean of an embedding over seq [batch, 2]."""
    emb = np.arange(20, dtype=np.float32).reshape(10, 2)
    graph = helper.make_graph(
        [
            helper.make_node("Gather", ["emb", "ids"], ["e"]),
            helper.make_node("ReduceMean", ["e"], ["pooled"], axes=[1], keepdims=0),
        ],
        "seq",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", "seq"])],
        [helper.make_tensor_value_info("pooled", TensorProto.FLOAT, ["batch", 2])],
        [numpy_helper.from_array(emb, "emb")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


@pytest.mark.parametrize(
    "fmt, backend, files",
    [
        ("onnx", None, ["model.onnx"]),
        ("torchscript", None, ["model.pt"]),
        ("onnx", "python", ["model.onnx", "model.py"]),
    ],
)
def test_layout(tmp_path: Path, fmt: str, backend: str | None, files: list[str]) -> None:
    src = tmp_path / "file.bin"
    src.write_bytes(b"model bytes")
    d = write_repository(
        tmp_path / "repo", "digits", src, artifact_format=fmt, inputs=IN, outputs=OUT, serving=Serving(), target="edge", backend=backend
    )
    assert d == tmp_path / "repo" / "digits"
    assert sorted(p.name for p in (d / "1").iterdir()) == sorted(files)
    cfg = parse_model_config((d / "config.pbtxt").read_text())
    assert cfg.name == "digits"
    model_file = "model.onnx" if fmt == "onnx" else "model.pt"
    assert (d / "1" / model_file).read_bytes() == b"model bytes"
    if backend == "python":
        assert (d / "1" / "model.py").read_text() == python_model_source()


def test_existing_model_directory_is_replaced(tmp_path: Path) -> None:
    src = tmp_path / "m.onnx"
    src.write_bytes(b"a")
    d = write_repository(tmp_path, "m", src, artifact_format="onnx", inputs=IN, outputs=OUT, serving=None, target="edge")
    (d / "1" / "stale.txt").write_text("old")
    d = write_repository(tmp_path, "m", src, artifact_format="onnx", inputs=IN, outputs=OUT, serving=None, target="edge")
    assert not (d / "1" / "stale.txt").exists()


def test_missing_model_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        write_repository(tmp_path, "m", tmp_path / "nope.onnx", artifact_format="onnx", inputs=IN, outputs=OUT, serving=None, target="edge")


def load_python_model(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location("triton_python_model_under_test", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules.pop(spec.name, None)
    spec.loader.exec_module(module)
    return module


def test_python_model_loads_outside_triton(tmp_path: Path) -> None:
    d = write_repository(
        tmp_path, "m", matmul_onnx(tmp_path / "m.onnx"), artifact_format="onnx", inputs=IN, outputs=OUT,
        serving=Serving(), target="edge", backend="python",
    )
    module = load_python_model(d / "1" / "model.py")
    assert hasattr(module, "TritonPythonModel")
    for name in ("initialize", "execute", "finalize"):
        assert callable(getattr(module.TritonPythonModel, name))


def test_python_model_batches_compatible_requests(tmp_path: Path) -> None:
    """The batching logic of model.py on a real ONNX Runtime session: requests with the same
    shapes past the batch axis run together, others alone, and every request gets its own rows."""
    path = seq_onnx(tmp_path / "seq.onnx")
    module = load_python_model(Path(write_repository(
        tmp_path, "m", path, artifact_format="onnx", inputs=[TensorSpec(name="ids", dtype=DType.int64, shape=[-1, -1])],
        outputs=[TensorSpec(name="pooled", shape=[-1, 2])], serving=Serving(), target="edge", backend="python",
    )) / "1" / "model.py")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    calls: list[dict[str, tuple[int, ...]]] = []

    def run(feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        calls.append({k: v.shape for k, v in feed.items()})
        return session.run(["pooled"], feed)

    rng = np.random.default_rng(0)
    requests = [
        {"ids": rng.integers(0, 10, (2, 5))},
        {"ids": rng.integers(0, 10, (1, 7))},  # another sequence length: its own group
        {"ids": rng.integers(0, 10, (3, 5))},
        {"ids": np.array([[99, 1, 2, 3, 4]])},  # out of range: fails, and only this request
    ]
    results = module.run_batched(run, requests[:3], ["pooled"], batching=True)
    assert sorted(c["ids"] for c in calls) == [(1, 7), (5, 5)]
    for req, res in zip(requests[:3], results):
        want = session.run(["pooled"], req)[0]
        np.testing.assert_allclose(res["pooled"], want, rtol=1e-6)

    results = module.run_batched(run, [requests[0], requests[1], requests[3]], ["pooled"], batching=True)
    assert isinstance(results[2], Exception)
    assert isinstance(results[0], dict) and isinstance(results[1], dict)
    np.testing.assert_allclose(results[0]["pooled"], session.run(["pooled"], requests[0])[0], rtol=1e-6)

    calls.clear()
    module.run_batched(run, requests[:3], ["pooled"], batching=False)
    assert len(calls) == 3


def test_group_requests_keeps_order() -> None:
    module = load_python_model(PYTHON_MODEL_SOURCE)
    groups = module.group_requests([{"a": (1, 3)}, {"a": (2, 4)}, {"a": (5, 3)}, {"a": (1, 4)}])
    assert groups == [[0, 2], [1, 3]]


def test_as_python_backend_converts_onnxruntime_configs(tmp_path: Path) -> None:
    src = write_repository(
        tmp_path / "artifact", "m", matmul_onnx(tmp_path / "m.onnx"), artifact_format="onnx", inputs=IN, outputs=OUT,
        serving=Serving(gpus=1, gpu_accelerator="tensorrt", instance_count=2, max_batch_size=4, intra_op_threads=2), target="cloud",
    )
    dest = as_python_backend(src, tmp_path / "serve")
    cfg = parse_model_config((dest / "config.pbtxt").read_text())
    assert cfg.backend == "python" and not cfg.platform
    # The onnxruntime backend's thread count becomes the Python model's parameter.
    assert cfg.parameters["intra_op_threads"].string_value == "2" and "intra_op_thread_count" not in cfg.parameters
    assert cfg.max_batch_size == 4 and cfg.HasField("dynamic_batching")
    assert cfg.instance_group[0].kind == mc.ModelInstanceGroup.KIND_CPU and cfg.instance_group[0].count == 2
    assert not cfg.HasField("optimization")
    assert sorted(p.name for p in (dest / "1").iterdir()) == ["model.onnx", "model.py"]
    # The source is untouched.
    assert parse_model_config((src / "config.pbtxt").read_text()).backend == "onnxruntime"
    # A Python-backend repository goes through unchanged but for GPU kinds.
    again = as_python_backend(dest, tmp_path / "again")
    assert parse_model_config((again / "config.pbtxt").read_text()) == cfg


def test_as_python_backend_refuses_torchscript(tmp_path: Path) -> None:
    src = tmp_path / "m.pt"
    src.write_bytes(b"x")
    d = write_repository(tmp_path / "a", "m", src, artifact_format="torchscript", inputs=IN, outputs=OUT, serving=None, target="edge")
    with pytest.raises(ConfigError, match="Python backend"):
        as_python_backend(d, tmp_path / "b")

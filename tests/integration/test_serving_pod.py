"""The Triton init container (`model-operator assemble`) and the artifact commands, on real
artifacts: a published repository is copied with a fresh config.pbtxt, a tampered one is refused."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import onnx
from onnx import TensorProto, helper

from model_operator.api.types import Serving, Target, TensorSpec
from model_operator.storage import artifact_digest, publish_dir
from model_operator.triton.config import parse_model_config
from model_operator.triton.repository import write_repository


def _onnx_model(path: Path) -> Path:
    node = helper.make_node("Relu", ["x"], ["y"])
    graph = helper.make_graph(
        [node], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def _artifact(tmp: Path, name: str = "m") -> tuple[str, str]:
    staging = tmp / "staging"
    write_repository(
        staging / "repository", name, _onnx_model(tmp / "m.onnx"), artifact_format="onnx",
        inputs=[TensorSpec(name="x", shape=[-1, 4])], outputs=[TensorSpec(name="y", shape=[-1, 4])],
        serving=Serving(backend="python"), target=Target.edge,
    )
    (staging / "golden.npz").write_bytes(b"not used here")
    (staging / "COMPLETE").write_text(json.dumps({"sha256": artifact_digest(staging), "specHash": "abc"}))
    dest = tmp / "store" / "ns" / name / "abc"
    publish_dir(staging, str(dest))
    return str(dest), artifact_digest(dest)


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "model_operator.cli", *args], capture_output=True, text=True, timeout=120)


def test_assemble_writes_config_for_current_serving(tmp_path: Path) -> None:
    uri, digest = _artifact(tmp_path)
    out = tmp_path / "models"
    serving = {"backend": "python", "maxBatchSize": 32, "instanceCount": 3, "dynamicBatching": {"maxQueueDelayMicroseconds": 500}}
    proc = run("assemble", "--artifact", uri, "--sha256", digest, "--name", "m", "--target", "edge",
               "--serving-json", json.dumps(serving), "--output", str(out))
    assert proc.returncode == 0, proc.stderr
    cfg = parse_model_config((out / "m" / "config.pbtxt").read_text())
    assert cfg.max_batch_size == 32 and cfg.backend == "python"
    assert cfg.instance_group[0].count == 3
    assert cfg.dynamic_batching.max_queue_delay_microseconds == 500
    assert (out / "m" / "1" / "model.py").exists() and (out / "m" / "1" / "model.onnx").exists()


def test_assemble_refuses_a_tampered_or_unexpected_artifact(tmp_path: Path) -> None:
    uri, digest = _artifact(tmp_path)
    out = tmp_path / "models"
    proc = run("assemble", "--artifact", uri, "--sha256", "0" * 64, "--name", "m", "--output", str(out))
    assert proc.returncode == 3 and "digest mismatch" in proc.stderr and proc.stderr.count("\n") == 1
    model = Path(uri) / "repository" / "m" / "1" / "model.onnx"
    model.write_bytes(model.read_bytes() + b"\0")
    proc = run("assemble", "--artifact", uri, "--sha256", digest, "--name", "m", "--output", str(out))
    assert proc.returncode == 3 and "digest mismatch" in proc.stderr
    assert not (out / "m").exists()


def test_artifacts_verify_and_delete(tmp_path: Path) -> None:
    uri, digest = _artifact(tmp_path)
    assert run("artifacts", "verify", "--uri", uri, "--sha256", digest).returncode == 0
    proc = run("artifacts", "delete", "--uri", str(Path(uri).parent))
    assert proc.returncode == 0 and "deleted" in proc.stdout
    assert not Path(uri).exists()
    assert run("artifacts", "verify", "--uri", uri).returncode == 2

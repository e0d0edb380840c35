"""`model-operator local up` as users run it: a subprocess that serves until SIGINT/SIGTERM.

These tests give it an artifact laid out by the worker's contract (docs/contracts.md) and
`--skip-optimize`, so they exercise the local run without depending on the optimizer; the
digits example through the real worker is in test_local_digits.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import yaml
from onnx import TensorProto, helper, numpy_helper

from model_operator.api.types import Serving, TensorSpec
from model_operator.local.main import read_file, resolve_paths
from model_operator.triton import client
from model_operator.triton.config import parse_model_config
from model_operator.triton.repository import write_repository
from model_operator.triton.server import free_port

ROOT = Path(__file__).resolve().parents[2]
NAME = "tiny"


def wait_for(cond: Callable[[], bool], timeout: float, what: str, proc: subprocess.Popen[str] | None = None) -> None:
    deadline = time.monotonic() + timeout
    delay = 0.05
    while not cond():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"local up exited with {proc.returncode} while waiting for {what}:\n{proc.stderr.read() if proc.stderr else ''}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 2, 0.5)


def tiny_onnx(path: Path) -> Path:
    w = np.random.default_rng(3).normal(size=(6, 4)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["features", "w"], ["scores"])],
        "tiny",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", 6])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", 4])],
        [numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def make_case(tmp_path: Path, target: str = "edge") -> tuple[Path, Path, Path]:
    """(model file, ModelDeployment YAML, workdir holding a complete artifact)."""
    (tmp_path / "models").mkdir()
    model = tiny_onnx(tmp_path / "models" / "tiny.onnx")
    spec = {
        "model": {
            "uri": "models/tiny.onnx",
            "inputs": [{"name": "features", "shape": [-1, 6]}],
            "outputs": [{"name": "scores", "shape": [-1, 4]}],
        },
        "target": target,
    }
    if target != "device":
        spec["serving"] = {"maxBatchSize": 4, "instanceCount": 1}
    doc = {"apiVersion": "serving.model-operator.io/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": NAME}, "spec": spec}
    yaml_file = tmp_path / "md.yaml"
    yaml_file.write_text(yaml.safe_dump(doc))
    workdir = tmp_path / "work"
    artifact = workdir / "artifact"
    # What the worker writes for a cloud GPU spec: an onnxruntime config the local Triton can't run as is.
    write_repository(artifact / "repository", NAME, model, artifact_format="onnx",
                     inputs=[TensorSpec(name="features", shape=[-1, 6])], outputs=[TensorSpec(name="scores", shape=[-1, 4])],
                     serving=Serving(gpus=1, gpu_accelerator="tensorrt"), target="cloud")
    (artifact / "COMPLETE").write_text(json.dumps({"sha256": "0" * 64, "specHash": "abcdef0123"}))
    (workdir / "summary.json").write_text(json.dumps({
        "ok": True, "reason": "", "specHash": "abcdef0123",
        "artifact": {"uri": str(artifact), "sha256": "0" * 64, "format": "onnx", "sizeBytes": 200, "originalSizeBytes": 200},
        "optimization": {"recipe": "none", "qualityBefore": {"top1": 1.0}, "qualityAfter": {"top1": 1.0},
                         "latencyMsBefore": 0.1, "latencyMsAfter": 0.1, "candidates": []},
    }))
    return model, yaml_file, workdir


class Output:
    """Collects a process's stdout lines in a thread, so the test can wait for the status block."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        assert proc.stdout is not None
        self._thread = threading.Thread(target=self._read, args=(proc.stdout,), daemon=True)
        self._thread.start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self.lines.append(line)

    def has(self, text: str) -> bool:
        return any(text in line for line in self.lines)

    def text(self) -> str:
        self._thread.join(timeout=30)
        return "".join(self.lines)


def local_up(yaml_file: Path, workdir: Path, *extra: str, ports: tuple[int, int, int] | None = None) -> subprocess.Popen[str]:
    args = [sys.executable, "-m", "model_operator.cli", "local", "up", str(yaml_file), "--workdir", str(workdir), *extra]
    if ports:
        args += ["--http-port", str(ports[0]), "--grpc-port", str(ports[1]), "--metrics-port", str(ports[2])]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT / "operator"), env.get("PYTHONPATH")) if p)
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=yaml_file.parent)


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for p in started:
        if p.poll() is None:
            p.kill()
            p.wait()


@pytest.mark.slow
@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_serves_the_artifact_and_stops_cleanly(tmp_path: Path, procs: list, stop_signal: signal.Signals) -> None:
    model, yaml_file, workdir = make_case(tmp_path)
    ports = (free_port(), free_port(), free_port())
    proc = local_up(yaml_file, workdir, "--skip-optimize", ports=ports)
    procs.append(proc)
    endpoint = f"127.0.0.1:{ports[0]}"
    output = Output(proc)
    # The status block on stdout is local up's "ready": it is printed once Triton is.
    wait_for(lambda: output.has("modelName:"), 120, "the status block", proc)
    client.wait_ready(endpoint, NAME, timeout=5)
    x = np.random.default_rng(0).random((3, 6), dtype=np.float32)
    want = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]).run(None, {"features": x})[0]
    np.testing.assert_allclose(client.infer(endpoint, NAME, {"features": x})["scores"], want, rtol=1e-5)
    np.testing.assert_allclose(
        client.infer(f"127.0.0.1:{ports[1]}", NAME, {"features": x}, protocol="grpc")["scores"], want, rtol=1e-5
    )
    # Served through the Python backend, with the spec's serving block (maxBatchSize 4, CPU).
    cfg = parse_model_config((workdir / "repository" / NAME / "config.pbtxt").read_text())
    assert cfg.backend == "python" and cfg.max_batch_size == 4

    proc.send_signal(stop_signal)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    status = yaml.safe_load(output.text())
    assert status["kind"] == "ModelDeployment" and status["metadata"]["name"] == NAME
    s = status["status"]
    assert s["phase"] == "Ready"
    assert s["endpoint"] == {
        "http": f"http://127.0.0.1:{ports[0]}",
        "grpc": f"127.0.0.1:{ports[1]}",
        "metrics": f"http://127.0.0.1:{ports[2]}/metrics",
        "modelName": NAME,
    }
    assert s["artifact"]["format"] == "onnx" and s["artifact"]["sha256"] == "0" * 64
    assert s["optimization"]["recipe"] == "none"
    assert {c["type"]: c["status"] for c in s["conditions"]}["Available"] == "True"
    assert s["readyReplicas"] == 1
    assert (workdir / "triton.log").stat().st_size > 0
    # Triton is gone with it.
    with pytest.raises(OSError):
        client.connect(endpoint).is_server_live()


@pytest.mark.slow
def test_device_target_packages_only(tmp_path: Path) -> None:
    _, yaml_file, workdir = make_case(tmp_path, target="device")
    proc = local_up(yaml_file, workdir, "--skip-optimize")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    s = yaml.safe_load(out)["status"]
    assert s["phase"] == "Ready" and "endpoint" not in s
    assert s["artifact"]["uri"] == str(workdir / "artifact")
    assert not (workdir / "repository").exists() and not (workdir / "triton.log").exists()


@pytest.mark.slow
def test_bad_spec_exits_2_naming_the_field(tmp_path: Path) -> None:
    _, yaml_file, workdir = make_case(tmp_path)
    doc = yaml.safe_load(yaml_file.read_text())
    doc["spec"]["serving"]["maxBatchSize"] = -3
    yaml_file.write_text(yaml.safe_dump(doc))
    proc = local_up(yaml_file, workdir, "--skip-optimize")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2
    assert "spec.serving.maxBatchSize" in err


@pytest.mark.slow
def test_skip_optimize_without_an_artifact_exits_2(tmp_path: Path) -> None:
    _, yaml_file, _ = make_case(tmp_path)
    proc = local_up(yaml_file, tmp_path / "empty", "--skip-optimize")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2 and "COMPLETE" in err


@pytest.mark.slow
def test_triton_failure_exits_1_with_its_log(tmp_path: Path) -> None:
    _, yaml_file, workdir = make_case(tmp_path)
    # An ONNX file that is not one: Triton's model fails to load, local up reports it.
    (workdir / "artifact" / "repository" / NAME / "1" / "model.onnx").write_bytes(b"truncated")
    proc = local_up(yaml_file, workdir, "--skip-optimize", ports=(free_port(), free_port(), free_port()))
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == 1
    assert "Triton exited" in err and NAME in err


def test_relative_paths_resolve_against_the_yaml_directory(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    f = tmp_path / "sub" / "md.yaml"
    f.write_text(yaml.safe_dump({
        "kind": "ModelDeployment", "metadata": {"name": "m"},
        "spec": {"model": {"uri": "./m.onnx"}, "data": {"validation": {"uri": "file://data/v.npz"},
                                                          "calibration": {"uri": "s3://bucket/c.npz"}}},
    }))
    name, spec = read_file(f)
    assert name == "m"
    assert spec["model"]["uri"] == str(tmp_path / "sub" / "m.onnx")
    assert spec["data"]["validation"]["uri"] == str(tmp_path / "sub" / "data" / "v.npz")
    assert spec["data"]["calibration"]["uri"] == "s3://bucket/c.npz"
    assert resolve_paths({"model": {"uri": "/abs/m.onnx"}}, tmp_path)["model"]["uri"] == "/abs/m.onnx"
    # A bare spec (no kind/metadata) is named after the file.
    bare = tmp_path / "bare.yaml"
    bare.write_text(yaml.safe_dump({"model": {"uri": "m.onnx"}}))
    assert read_file(bare)[0] == "bare"

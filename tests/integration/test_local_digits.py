"""The README's quick start, end to end: train the digits CNN, `model-operator local up` the
example ModelDeployment (the real worker: static int8 with the quality gate; then the real
Triton), compare Triton's classes with the original TorchScript model's, probe the golden set,
and stop with SIGINT (exit 0)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from model_operator.triton import client
from model_operator.triton.server import free_port

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "digits"


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT / "operator"), env.get("PYTHONPATH")) if p)
    return env


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_local_up_digits_serves_the_original_models_classes(tmp_path: Path) -> None:
    import torch

    # The example as a user has it: the YAML beside the trainer's outputs (paths are relative to it).
    shutil.copy(EXAMPLE / "modeldeployment.yaml", tmp_path / "modeldeployment.yaml")
    subprocess.run([sys.executable, str(EXAMPLE / "train.py"), "--out", str(tmp_path)], check=True, env=_env(),
                   capture_output=True, timeout=600)
    ports = (free_port(), free_port(), free_port())
    workdir = tmp_path / "work"
    proc = subprocess.Popen(
        [sys.executable, "-m", "model_operator.cli", "local", "up", str(tmp_path / "modeldeployment.yaml"),
         "--workdir", str(workdir), "--http-port", str(ports[0]), "--grpc-port", str(ports[1]),
         "--metrics-port", str(ports[2])],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(),
    )
    lines: list[str] = []
    assert proc.stdout is not None
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True)  # type: ignore[union-attr]
    reader.start()
    try:
        deadline = time.monotonic() + 600
        delay = 0.1
        while not any("modelName:" in ln for ln in lines):
            if proc.poll() is not None:
                raise AssertionError(f"local up exited with {proc.returncode}:\n{proc.stderr.read() if proc.stderr else ''}")
            assert time.monotonic() < deadline, "local up did not print its status block in time"
            time.sleep(delay)
            delay = min(delay * 2, 1.0)
        endpoint = f"127.0.0.1:{ports[0]}"
        client.wait_ready(endpoint, "digits", timeout=10)

        with np.load(tmp_path / "validation.npz") as val:
            x, labels = val["input"], val["labels"]
        original = torch.jit.load(str(tmp_path / "digits.pt")).eval()
        with torch.no_grad():
            want = original(torch.from_numpy(x)).numpy().argmax(1)
        got = np.concatenate(
            [client.infer(endpoint, "digits", {"input": x[i : i + 32]})["logits"] for i in range(0, len(x), 32)]
        ).argmax(1)
        assert got.shape == want.shape == labels.shape
        agreement = float(np.mean(got == want))
        # The gate allowed at most 0.5 point of top-1 lost; the served model agrees with the original.
        assert agreement >= 0.99, agreement
        assert float(np.mean(got == labels)) >= float(np.mean(want == labels)) - 0.005
        # The README's request: the first validation image, over gRPC too.
        one = client.infer(f"127.0.0.1:{ports[1]}", "digits", {"input": x[:1]}, protocol="grpc")["logits"]
        assert one.argmax(1)[0] == got[0]
        # The golden probe the operator runs, against this endpoint.
        result = client.probe(endpoint, "digits", workdir / "artifact" / "golden.npz", {"maxTop1Drop": 0.0, "minCosine": 0.999})
        assert result.passed, result.reason
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        try:
            _, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
        reader.join(timeout=10)
    assert proc.returncode == 0, err
    status = yaml.safe_load("".join(lines))["status"]
    assert status["phase"] == "Ready"
    assert status["artifact"]["format"] == "onnx" and status["artifact"]["sizeBytes"] < status["artifact"]["originalSizeBytes"]
    assert status["optimization"]["recipe"]
    assert status["endpoint"]["http"] == f"http://127.0.0.1:{ports[0]}"

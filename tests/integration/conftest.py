"""Fixtures for the worker's integration tests: real models trained or built here (the digits
CNN from examples/digits/train.py, a small transformer encoder with int64 input_ids and
attention_mask), a helper that runs `model-operator optimize` as a subprocess, a checker for the
artifact it writes, and a moto S3 server on loopback."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
OPERATOR = ROOT / "operator"


# --- running the worker -------------------------------------------------------------------------


@dataclass
class WorkerResult:
    rc: int
    stderr: str
    summary: dict[str, Any]

    @property
    def last_line(self) -> str:
        lines = [ln for ln in self.stderr.splitlines() if ln.strip()]
        return lines[-1] if lines else ""


def run_worker(
    output: str | Path,
    *,
    spec: dict[str, Any] | None = None,
    spec_file: Path | None = None,
    name: str = "model",
    env: dict[str, str] | None = None,
    summary: Path | None = None,
    timeout: float = 600,
    extra_args: list[str] | None = None,
    clean_env: bool = False,
) -> WorkerResult:
    """`python -m model_operator.cli optimize ...` with short latency measurements."""
    summary = summary or Path(str(output).replace("s3://", "/tmp/s3-").rstrip("/") + ".summary.json")
    summary.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "model_operator.cli", "optimize", "--output", str(output), "--name", name, "--report-summary", str(summary)]
    if spec_file is not None:
        cmd += ["--spec", str(spec_file)]
    else:
        cmd += ["--spec-json", json.dumps(spec)]
    cmd += extra_args or []
    # clean_env: none of this process' AWS_* variables (a pod holds only what the Job gives it).
    full_env = {k: v for k, v in os.environ.items() if not (clean_env and k.startswith("AWS_"))}
    full_env["PYTHONPATH"] = os.pathsep.join([str(OPERATOR), full_env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    full_env.setdefault("MODEL_OPERATOR_LATENCY_BUDGET_S", "0.2")
    full_env.update(env or {})
    proc = subprocess.run(cmd, capture_output=True, text=True, env=full_env, timeout=timeout, check=False, cwd=str(ROOT))
    data: dict[str, Any] = {}
    if summary.exists():
        data = json.loads(summary.read_text())
        assert len(summary.read_bytes()) < 4096, "the summary must fit a termination message"
    return WorkerResult(proc.returncode, proc.stderr, data)


def check_artifact(dest: Path, name: str, *, fmt: str = "onnx") -> dict[str, Any]:
    """The contract of docs/contracts.md: files present, COMPLETE written last and matching the
    digest, report fields present. Returns report.json."""
    from model_operator.storage import artifact_digest, verify_dir
    from model_operator.triton.config import parse_model_config

    files = sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file())
    model_file = "model.onnx" if fmt == "onnx" else "model.pt"
    for required in ("COMPLETE", "report.json", "golden.npz", f"repository/{name}/config.pbtxt", f"repository/{name}/1/{model_file}"):
        assert required in files, f"{required} missing from {files}"
    mtimes = {f: (dest / f).stat().st_mtime_ns for f in files}
    assert mtimes["COMPLETE"] == max(mtimes.values()), "COMPLETE must be written last"
    marker = json.loads((dest / "COMPLETE").read_text())
    assert marker["sha256"] == artifact_digest(dest) == verify_dir(dest)
    report = json.loads((dest / "report.json").read_text())
    assert report["artifact"]["sha256"] == marker["sha256"] and report["specHash"] == marker["specHash"]
    assert set(report["artifact"]["files"]) == {f for f in files if f not in ("COMPLETE", "report.json")}
    for key in ("recipe", "qualityBefore", "qualityAfter", "latencyMsBefore", "latencyMsAfter", "candidates"):
        assert key in report["optimization"], key
    for cand in report["optimization"]["candidates"]:
        assert {"name", "passed", "latencyMs", "sizeBytes", "quality", "reason"} <= set(cand)
    parse_model_config((dest / f"repository/{name}/config.pbtxt").read_text())
    return report


def check_summary(summary: dict[str, Any], dest: str, report: dict[str, Any]) -> None:
    assert summary["ok"] is True and summary["reason"] == ""
    assert summary["artifact"]["uri"] == dest
    assert summary["artifact"]["sha256"] == report["artifact"]["sha256"]
    assert summary["artifact"]["sizeBytes"] == report["artifact"]["sizeBytes"]
    assert summary["optimization"]["recipe"] == report["optimization"]["recipe"]


def ort_run(path: Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    return sess.run(None, {n: feeds[n] for n in names})


def mean_cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = a.reshape(len(a), -1).astype(np.float64)
    b = b.reshape(len(b), -1).astype(np.float64)
    return float(np.mean((a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)))


# --- models --------------------------------------------------------------------------------------


@dataclass
class Digits:
    dir: Path
    torchscript: Path
    onnx: Path
    validation: Path
    calibration: Path


@pytest.fixture(scope="session")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Digits:
    """The digits CNN trained by the example's own script (seeded, a few seconds)."""
    import importlib.util

    out = tmp_path_factory.mktemp("digits")
    spec = importlib.util.spec_from_file_location("digits_train", ROOT / "examples/digits/train.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--out", str(out), "--epochs", "15"]) == 0
    return Digits(out, out / "digits.pt", out / "digits.onnx", out / "validation.npz", out / "calibration.npz")


def build_encoder(**sizes: int) -> Any:
    """The encoder from examples/transformer/encoder.py (tiny by default, for tests)."""
    path = ROOT / "examples" / "transformer" / "encoder.py"
    spec = importlib.util.spec_from_file_location("example_transformer_encoder", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build_encoder(**sizes)


def token_batch(rng: np.random.Generator, n: int, seq: int, vocab: int = 200) -> dict[str, np.ndarray]:
    ids = rng.integers(1, vocab, (n, seq)).astype(np.int64)
    mask = np.ones((n, seq), np.int64)
    for i in range(n):
        length = int(rng.integers(3, seq + 1))
        mask[i, length:] = 0
        ids[i, length:] = 0
    return {"input_ids": ids, "attention_mask": mask}


@dataclass
class EncoderFiles:
    dir: Path
    module: Any
    torchscript: Path
    exported: Path
    onnx: Path
    validation: Path
    calibration: Path

    INPUTS = [
        {"name": "input_ids", "dtype": "int64", "shape": [-1, -1]},
        {"name": "attention_mask", "dtype": "int64", "shape": [-1, -1]},
    ]


@pytest.fixture(scope="session")
def encoder(tmp_path_factory: pytest.TempPathFactory) -> EncoderFiles:
    import torch

    out = tmp_path_factory.mktemp("encoder")
    model = build_encoder()
    rng = np.random.default_rng(0)
    np.savez(out / "validation.npz", **token_batch(rng, 48, 12))
    np.savez(out / "calibration.npz", **token_batch(rng, 32, 12))
    ex = token_batch(rng, 2, 12)
    args = (torch.from_numpy(ex["input_ids"]), torch.from_numpy(ex["attention_mask"]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.trace(model, args).save(str(out / "encoder.pt"))
        batch, seq = torch.export.Dim("batch"), torch.export.Dim("seq", max=64)
        ep = torch.export.export(model, args, dynamic_shapes={"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: seq}})
        torch.export.save(ep, str(out / "encoder.pt2"))
        torch.onnx.export(
            model, args, str(out / "encoder.onnx"), dynamo=False, input_names=["input_ids", "attention_mask"], output_names=["embedding"],
            dynamic_axes={"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"}, "embedding": {0: "batch"}},
            opset_version=17,
        )
    return EncoderFiles(out, model, out / "encoder.pt", out / "encoder.pt2", out / "encoder.onnx", out / "validation.npz", out / "calibration.npz")


# --- S3 ------------------------------------------------------------------------------------------


@dataclass
class S3:
    endpoint: str
    key: str
    secret: str

    @property
    def env(self) -> dict[str, str]:
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.key,
            "AWS_SECRET_ACCESS_KEY": self.secret,
            "AWS_DEFAULT_REGION": "us-east-1",
            "MODEL_OPERATOR_S3_ATTEMPTS": "1",
        }

    def keys(self, prefix: str) -> list[str]:
        """Keys under `prefix` (relative), listed with moto's authentication paused (see s3_auth)."""
        from moto import settings

        old = settings.INITIAL_NO_AUTH_ACTION_COUNT
        settings.INITIAL_NO_AUTH_ACTION_COUNT = float("inf")
        try:
            resp = self.client().list_objects_v2(Bucket="models", Prefix=prefix)
        finally:
            settings.INITIAL_NO_AUTH_ACTION_COUNT = old
        return sorted(o["Key"][len(prefix):] for o in resp.get("Contents", []))

    def client(self) -> Any:
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1", aws_access_key_id=self.key, aws_secret_access_key=self.secret)


@pytest.fixture(scope="session")
def s3() -> Iterator[S3]:
    """A moto S3 server on loopback with an IAM user whose keys the tests use."""
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    iam = boto3.client("iam", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="setup", aws_secret_access_key="setup")
    user = f"worker-{uuid.uuid4().hex[:8]}"  # moto's state is per process, shared by every server
    iam.create_user(UserName=user)
    policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}
    iam.put_user_policy(UserName=user, PolicyName="s3", PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName=user)["AccessKey"]
    store = S3(endpoint, key["AccessKeyId"], key["SecretAccessKey"])
    try:
        store.client().create_bucket(Bucket="models")
    except Exception as exc:  # noqa: BLE001 - another moto server in this process made it
        if "BucketAlreadyOwnedByYou" not in str(exc) and "BucketAlreadyExists" not in str(exc):
            raise
    yield store
    server.stop()


@pytest.fixture()
def s3_auth() -> Iterator[None]:
    """moto checks keys and signatures while this is active (off by default: moto miscomputes
    the signature of a ListObjectsV2 whose prefix holds a '/', which publishing needs)."""
    from moto import settings

    old = settings.INITIAL_NO_AUTH_ACTION_COUNT
    settings.INITIAL_NO_AUTH_ACTION_COUNT = 0
    yield
    settings.INITIAL_NO_AUTH_ACTION_COUNT = old

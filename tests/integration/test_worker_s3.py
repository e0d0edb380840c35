"""The worker against S3 (a moto server on loopback): model and data read from s3://, the artifact
published to s3:// with COMPLETE last and a digest that verifies; wrong credentials and an
unreachable endpoint fail with exit 2, a one-line reason naming the URI, and nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import S3, Digits, run_worker

pytestmark = pytest.mark.slow

IO = {
    "inputs": [{"name": "input", "dtype": "float32", "shape": [-1, 1, 8, 8]}],
    "outputs": [{"name": "logits", "dtype": "float32", "shape": [-1, 10]}],
}


@pytest.fixture(scope="module")
def uploaded(s3: S3, digits: Digits) -> dict[str, str]:
    client = s3.client()
    client.upload_file(str(digits.torchscript), "models", "src/digits.pt")
    client.upload_file(str(digits.validation), "models", "src/validation.npz")
    client.upload_file(str(digits.calibration), "models", "src/calibration.npz")
    return {"model": "s3://models/src/digits.pt", "validation": "s3://models/src/validation.npz", "calibration": "s3://models/src/calibration.npz"}


def _spec(uploaded: dict[str, str]) -> dict:
    return {
        "model": {"uri": uploaded["model"], "format": "torchscript", **IO},
        "data": {"validation": {"uri": uploaded["validation"]}, "calibration": {"uri": uploaded["calibration"], "samples": 128}},
        "optimization": {"quantization": {"mode": "static-int8"}, "qualityGate": {"maxTop1Drop": 0.01}},
    }


def test_read_and_publish_s3(s3: S3, uploaded: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dest = "s3://models/artifacts/ns/digits/abc123"
    res = run_worker(dest, spec=_spec(uploaded), name="digits", env=s3.env, summary=tmp_path / "s.json")
    assert res.rc == 0, res.stderr
    assert s3.keys("artifacts/ns/digits/abc123/") == [
        "COMPLETE", "golden.npz", "report.json", "repository/digits/1/model.onnx", "repository/digits/config.pbtxt",
    ]
    objs = s3.client().list_objects_v2(Bucket="models", Prefix="artifacts/ns/digits/abc123/")["Contents"]
    complete = next(o for o in objs if o["Key"].endswith("COMPLETE"))
    assert complete["LastModified"] == max(o["LastModified"] for o in objs)
    for k, v in s3.env.items():
        monkeypatch.setenv(k, v)
    from model_operator.storage import verify

    assert verify(dest, res.summary["artifact"]["sha256"]) == res.summary["artifact"]["sha256"]
    assert res.summary["artifact"]["uri"] == dest
    report = json.loads(s3.client().get_object(Bucket="models", Key="artifacts/ns/digits/abc123/report.json")["Body"].read())
    assert report["source"]["uri"] == uploaded["model"]


@pytest.mark.parametrize("which", ["key", "secret"])
def test_wrong_credentials(s3: S3, uploaded: dict[str, str], tmp_path: Path, s3_auth: None, which: str) -> None:
    env = dict(s3.env)
    if which == "key":
        env["AWS_ACCESS_KEY_ID"] = "AKIAWRONGWRONGWRONG1"
    else:
        env["AWS_SECRET_ACCESS_KEY"] = "definitely-not-the-secret"
    dest = "s3://models/artifacts/ns/digits/wrongcreds"
    res = run_worker(dest, spec=_spec(uploaded), name="digits", env=env, summary=tmp_path / "s.json")
    assert res.rc == 2, res.stderr
    assert res.last_line.startswith("error: --output: s3://models/artifacts/ns/digits/wrongcreds: cannot list: "), res.last_line
    assert "AWS_ACCESS_KEY_ID" in res.last_line
    assert "definitely-not-the-secret" not in res.stderr and s3.secret not in res.stderr
    assert res.summary == {"ok": False, "reason": res.last_line[len("error: "):], "specHash": res.summary["specHash"], "exitCode": 2}
    assert s3.keys("artifacts/ns/digits/wrongcreds") == []


def test_wrong_credentials_for_the_model(s3: S3, uploaded: dict[str, str], tmp_path: Path, s3_auth: None) -> None:
    """The destination is a local directory; the model's S3 credentials are wrong."""
    env = {**s3.env, "AWS_SECRET_ACCESS_KEY": "wrong"}
    res = run_worker(tmp_path / "dest", spec=_spec(uploaded), name="digits", env=env, summary=tmp_path / "s.json")
    assert res.rc == 2
    assert res.last_line.startswith("error: spec.model.uri: s3://models/src/digits.pt: cannot read: the secret access key is wrong")
    assert not (tmp_path / "dest").exists()


def test_missing_object_and_unreachable_endpoint(s3: S3, uploaded: dict[str, str], tmp_path: Path) -> None:
    spec = _spec(uploaded)
    spec["data"]["validation"]["uri"] = "s3://models/src/nope.npz"
    res = run_worker(tmp_path / "a", spec=spec, name="digits", env=s3.env, summary=tmp_path / "a.json")
    assert res.rc == 2
    assert res.last_line == "error: spec.data.validation.uri: s3://models/src/nope.npz: cannot read: no such object"
    env = {**s3.env, "AWS_ENDPOINT_URL": "http://127.0.0.1:9"}
    res = run_worker(tmp_path / "b", spec=_spec(uploaded), name="digits", env=env, summary=tmp_path / "b.json")
    assert res.rc == 2
    assert res.last_line == "error: spec.model.uri: s3://models/src/digits.pt: cannot read: S3 endpoint http://127.0.0.1:9 is unreachable"
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()

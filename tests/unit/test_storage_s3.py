"""S3 against a real moto server on loopback (with IAM authentication on): read, publish with
COMPLETE last, verify, list, delete, and clear errors for wrong credentials and missing keys."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from model_operator.storage import (
    AccessDeniedError,
    NotFoundError,
    UnreachableError,
    artifact_digest,
    delete_prefix,
    download_dir,
    fetch,
    list_artifact,
    publish_dir,
    verify,
)


def _create_bucket(client: object, name: str) -> None:
    from botocore.exceptions import ClientError

    try:
        client.create_bucket(Bucket=name)  # type: ignore[attr-defined]
    except ClientError as exc:
        if exc.response["Error"]["Code"] not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
            raise


@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[dict[str, str]]:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"

    def client(service: str, key: str = "setup", secret: str = "setup") -> Any:
        return boto3.client(service, endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id=key, aws_secret_access_key=secret)

    iam = client("iam")
    user = f"worker-{uuid.uuid4().hex[:8]}"  # moto's state is per process, shared by every server
    iam.create_user(UserName=user)
    policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}
    iam.put_user_policy(UserName=user, PolicyName="s3", PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName=user)["AccessKey"]
    _create_bucket(client("s3"), "models")
    yield {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": key["AccessKeyId"], "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"]}
    server.stop()


@pytest.fixture()
def s3_auth() -> Iterator[None]:
    """Make moto authenticate every request (IAM keys and signatures checked). Only for the
    tests that need it: moto miscomputes the signature of a ListObjectsV2 whose prefix holds a
    '/', so the listing tests run with authentication off."""
    from moto import settings

    old = settings.INITIAL_NO_AUTH_ACTION_COUNT
    settings.INITIAL_NO_AUTH_ACTION_COUNT = 0
    yield
    settings.INITIAL_NO_AUTH_ACTION_COUNT = old


@pytest.fixture()
def s3env(moto_endpoint: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    for k, v in moto_endpoint.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("MODEL_OPERATOR_S3_ATTEMPTS", "1")
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    return moto_endpoint


def _s3(env: dict[str, str]):  # noqa: ANN202
    return boto3.client(
        "s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name="us-east-1",
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"], aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
    )


def _staged(root: Path) -> Path:
    (root / "repository/m/1").mkdir(parents=True)
    (root / "repository/m/1/model.onnx").write_bytes(b"weights")
    (root / "golden.npz").write_bytes(b"golden")
    (root / "report.json").write_text("{}")
    (root / "COMPLETE").write_text(json.dumps({"sha256": artifact_digest(root)}))
    return root


def test_fetch(s3env: dict[str, str], tmp_path: Path, s3_auth: None) -> None:
    _s3(s3env).put_object(Bucket="models", Key="digits/model.onnx", Body=b"onnx-bytes")
    path = fetch("s3://models/digits/model.onnx", tmp_path)
    assert path.read_bytes() == b"onnx-bytes"


def test_fetch_missing_key(s3env: dict[str, str], tmp_path: Path, s3_auth: None) -> None:
    with pytest.raises(NotFoundError) as exc:
        fetch("s3://models/nope.onnx", tmp_path)
    assert str(exc.value) == "s3://models/nope.onnx: cannot read: no such object"


@pytest.mark.parametrize("which", ["key", "secret"])
def test_wrong_credentials(s3env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, which: str, s3_auth: None) -> None:
    _s3(s3env).put_object(Bucket="models", Key="m.onnx", Body=b"x")
    if which == "key":
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAWRONGWRONGWRONG1")
    else:
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    with pytest.raises(AccessDeniedError) as exc:
        fetch("s3://models/m.onnx", tmp_path)
    msg = str(exc.value)
    assert msg.startswith("s3://models/m.onnx: cannot read: ") and "AWS_ACCESS_KEY_ID" in msg
    assert "not-the-secret" not in msg and s3env["AWS_SECRET_ACCESS_KEY"] not in msg
    with pytest.raises(AccessDeniedError):
        publish_dir(_staged(tmp_path / "src"), "s3://models/out/x")


def test_unreachable_endpoint(s3env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    with pytest.raises(UnreachableError, match=r"s3://models/m.onnx: cannot read: S3 endpoint http://127.0.0.1:9 is unreachable"):
        fetch("s3://models/m.onnx", tmp_path)


def test_publish_verify_list_delete(s3env: dict[str, str], tmp_path: Path) -> None:
    src = _staged(tmp_path / "src")
    s3 = _s3(s3env)
    s3.put_object(Bucket="models", Key="art/ns/m/abc/stale-from-a-crashed-run", Body=b"x")
    publish_dir(src, "s3://models/art/ns/m/abc")
    assert list_artifact("s3://models/art/ns/m/abc") == ["COMPLETE", "golden.npz", "report.json", "repository/m/1/model.onnx"]
    # COMPLETE was uploaded last.
    objs = s3.list_objects_v2(Bucket="models", Prefix="art/ns/m/abc/")["Contents"]
    newest = max(objs, key=lambda o: o["LastModified"])
    assert newest["LastModified"] == next(o for o in objs if o["Key"].endswith("COMPLETE"))["LastModified"]
    assert verify("s3://models/art/ns/m/abc", artifact_digest(src)) == artifact_digest(src)
    local = download_dir("s3://models/art/ns/m/abc", tmp_path / "dl")
    assert (local / "repository/m/1/model.onnx").read_bytes() == b"weights"
    assert delete_prefix("s3://models/art/ns/m") == 4
    assert list_artifact("s3://models/art/ns/m/abc") == []
    assert delete_prefix("s3://models/art/ns/m") == 0


def test_delete_refuses_bucket_root(s3env: dict[str, str]) -> None:
    from model_operator.storage import InvalidUriError

    with pytest.raises(InvalidUriError, match="whole bucket"):
        delete_prefix("s3://models/")

"""Pre-signed artifact access against a real S3-compatible server that enforces authentication
(S3Proxy, hack/kubetest/s3store.py): the operator signs, pods use only URLs. A URL opens one
object for one verb until it expires; nothing unsigned gets in; the user's credentials read the
user's inputs and play no part in publishing; the operator's cleanup stays inside its prefix."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from kubetest.s3store import S3Server
from kubetest.wait import wait_for
from model_operator.storage import AccessDeniedError, StorageError, artifact_digest, fetch, verify_dir
from model_operator.storage.presigned import ARCHIVE, get_archive, put_archive
from model_operator.storage.sign import delete_artifacts, presign, store_client

A = "s3://art/mo/team-a/digits/rev1"
B = "s3://art/mo/team-b/secret-model/rev9"


@pytest.fixture(scope="module")
def server() -> Iterator[S3Server]:
    with S3Server() as s:
        client = s.client()
        client.create_bucket(Bucket="art")
        client.create_bucket(Bucket="user-data")
        client.put_object(Bucket="art", Key=f"mo/team-b/secret-model/rev9/{ARCHIVE}", Body=b"tenant B's model")
        client.put_object(Bucket="user-data", Key="model.pt", Body=b"the user's model")
        yield s


@pytest.fixture()
def operator_client(server: S3Server, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The operator's client: the store's keys from its own environment."""
    for k, v in server.env.items():
        monkeypatch.setenv(k, v)
    c = store_client(server.endpoint, "us-east-1")
    for k in server.env:
        monkeypatch.delenv(k)
    return c


@pytest.fixture()
def pod_env(monkeypatch: pytest.MonkeyPatch, server: S3Server) -> None:
    """What a tenant's pod has: the endpoint, no store key."""
    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", server.endpoint)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("MODEL_OPERATOR_S3_ATTEMPTS", "1")


def artifact(root: Path) -> Path:
    src = root / "artifact"
    (src / "repository" / "digits" / "1").mkdir(parents=True)
    (src / "repository" / "digits" / "1" / "model.onnx").write_bytes(b"\x08\x07onnx")
    (src / "repository" / "digits" / "config.pbtxt").write_text('name: "digits"\n')
    (src / "report.json").write_text("{}\n")
    (src / "COMPLETE").write_text('{"sha256": "%s"}\n' % artifact_digest(src))
    return src


def grant_file(tmp: Path, name: str, url: str) -> Path:
    path = tmp / name
    path.write_text(url)
    return path


@pytest.mark.parametrize("compress", [False, True], ids=["cloud", "edge-gzip"])
def test_worker_puts_one_archive_and_readers_get_it(operator_client: Any, pod_env: None, server: S3Server, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch, compress: bool) -> None:
    urls = presign(operator_client, {"put-rev1": ("put", A), "get-rev1": ("get", A)}, 600)
    # The user's keys (here even the store's real ones) in the pod change nothing about publishing.
    monkeypatch.setenv("MODEL_SOURCE_AWS_ACCESS_KEY_ID", server.access_key)
    monkeypatch.setenv("MODEL_SOURCE_AWS_SECRET_ACCESS_KEY", server.secret_key)
    monkeypatch.setenv("MODEL_SOURCE_AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    src = artifact(tmp_path)
    size = put_archive(src, grant_file(tmp_path, "put", urls["put-rev1"]), A, compress=compress)
    head = server.client().head_object(Bucket="art", Key=f"mo/team-a/digits/rev1/{ARCHIVE}")
    assert head["ContentLength"] == size
    body = server.client().get_object(Bucket="art", Key=f"mo/team-a/digits/rev1/{ARCHIVE}")["Body"].read()
    assert body.startswith(b"\x1f\x8b") == compress, "edge and device archives travel gzip-compressed"
    got = get_archive(grant_file(tmp_path, "get", urls["get-rev1"]), tmp_path / "got", A)
    assert verify_dir(got) == artifact_digest(src)
    assert (got / "repository" / "digits" / "1" / "model.onnx").read_bytes() == b"\x08\x07onnx"


def test_a_url_opens_one_object_for_one_verb(operator_client: Any, server: S3Server) -> None:
    urls = presign(operator_client, {"put-rev1": ("put", A), "get-rev1": ("get", A)}, 600)
    put, get = urls["put-rev1"], urls["get-rev1"]
    requests.put(put, data=b"x", timeout=10).raise_for_status()
    assert requests.get(get, timeout=10).status_code == 200
    other = get.replace("/team-a/digits/rev1/", "/team-b/secret-model/rev9/")
    refused = {
        "tenant B's artifact with A's GET (same signature)": requests.get(other, timeout=10),
        "tenant B's artifact with A's PUT": requests.put(put.replace("/team-a/digits/rev1/", "/team-b/secret-model/rev9/"), data=b"evil", timeout=10),
        "a GET with the PUT URL": requests.get(put, timeout=10),
        "a DELETE with the GET URL": requests.delete(get, timeout=10),
        "a DELETE with the PUT URL": requests.delete(put, timeout=10),
        "unsigned GET": requests.get(f"{server.endpoint}/art/mo/team-b/secret-model/rev9/{ARCHIVE}", timeout=10),
        "unsigned LIST": requests.get(f"{server.endpoint}/art?list-type=2&prefix=mo/", timeout=10),
        "unsigned DELETE": requests.delete(f"{server.endpoint}/art/mo/team-b/secret-model/rev9/{ARCHIVE}", timeout=10),
        "LIST with A's GET query": requests.get(f"{server.endpoint}/art?list-type=2&" + get.split("?", 1)[1], timeout=10),
    }
    allowed = {what: r.status_code for what, r in refused.items() if r.status_code != 403}
    assert not allowed, f"the store let these through: {allowed}"
    body = server.client().get_object(Bucket="art", Key=f"mo/team-b/secret-model/rev9/{ARCHIVE}")["Body"].read()
    assert body == b"tenant B's model"


def test_wrong_keys_and_expired_urls_are_refused(operator_client: Any, server: S3Server, tmp_path: Path, pod_env: None) -> None:
    from botocore.exceptions import ClientError

    with pytest.raises(ClientError, match="SignatureDoesNotMatch|AccessDenied|Forbidden"):
        server.client(secret="not-the-secret").get_object(Bucket="art", Key=f"mo/team-b/secret-model/rev9/{ARCHIVE}")
    with pytest.raises(ClientError, match="InvalidAccessKeyId|AccessDenied|Forbidden"):
        server.client(key="AKIANOTAKEY", secret="x").list_objects_v2(Bucket="art")
    url = presign(operator_client, {"get-rev9": ("get", B)}, 1)["get-rev9"]
    start = time.monotonic()
    wait_for(lambda: requests.get(url, timeout=10).status_code == 403, timeout=15, interval=0.5, message="the URL to expire")
    assert time.monotonic() - start < 15
    with pytest.raises(AccessDeniedError, match="expired"):
        get_archive(grant_file(tmp_path, "get", url), tmp_path / "out", B)


def test_the_users_credentials_read_inputs_and_the_pod_has_nothing_else(server: S3Server, pod_env: None, tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    # Without the user's credentials the pod can read nothing: it holds no store key.
    with pytest.raises(AccessDeniedError):
        fetch("s3://user-data/model.pt", tmp_path / "in")
    monkeypatch.setenv("MODEL_SOURCE_AWS_ACCESS_KEY_ID", server.access_key)
    monkeypatch.setenv("MODEL_SOURCE_AWS_SECRET_ACCESS_KEY", server.secret_key)
    assert fetch("s3://user-data/model.pt", tmp_path / "in").read_bytes() == b"the user's model"
    # ... and the standard variables are not where the worker looks for them.
    monkeypatch.delenv("MODEL_SOURCE_AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("MODEL_SOURCE_AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAWRONGWRONGWRONG")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    with pytest.raises(AccessDeniedError):
        fetch("s3://user-data/model.pt", tmp_path / "in2")


def test_operator_cleanup_deletes_its_prefix_only(operator_client: Any, server: S3Server) -> None:
    c = server.client()
    keys = ["mo/team-a/gone/r1/artifact.tar", "mo/team-a/gone/r2/artifact.tar", "mo/team-a/gone-2/r1/artifact.tar"]
    for key in keys:
        c.put_object(Bucket="art", Key=key, Body=b"x")
    assert delete_artifacts(operator_client, "s3://art/mo/team-a/gone") == 2
    left = [o["Key"] for o in c.list_objects_v2(Bucket="art", Prefix="mo/team-a/gone")["Contents"]]
    assert left == ["mo/team-a/gone-2/r1/artifact.tar"]
    assert delete_artifacts(operator_client, "s3://art/mo/team-a/gone") == 0
    with pytest.raises(StorageError, match="refusing"):
        delete_artifacts(operator_client, "s3://art/")


@pytest.mark.slow
def test_the_worker_reads_with_the_users_keys_and_publishes_with_the_grant_only(
    operator_client: Any, server: S3Server, digits: Any, tmp_path: Path,
) -> None:
    """Both directions, in the worker itself: the user's keys (MODEL_SOURCE_*) read the model
    and data; the artifact goes out through the PUT grant alone; without the user's keys the
    grant reads nothing."""
    from conftest import run_worker

    c = server.client()
    c.create_bucket(Bucket="user-src")
    for f in (digits.torchscript, digits.validation):
        c.upload_file(str(f), "user-src", f.name)
    spec = {
        "model": {"uri": "s3://user-src/digits.pt", "format": "torchscript",
                  "inputs": [{"name": "input", "dtype": "float32", "shape": [-1, 1, 8, 8]}],
                  "outputs": [{"name": "logits", "dtype": "float32", "shape": [-1, 10]}]},
        "data": {"validation": {"uri": "s3://user-src/validation.npz"}},
        "optimization": {"quantization": {"mode": "none"}},
    }
    out = "s3://art/mo/team-a/worker/rev2"
    grant = grant_file(tmp_path, "put", presign(operator_client, {"put-rev2": ("put", out)}, 600)["put-rev2"])
    pod = {"AWS_ENDPOINT_URL": server.endpoint, "AWS_EC2_METADATA_DISABLED": "true", "MODEL_OPERATOR_S3_ATTEMPTS": "1",
           "AWS_CONFIG_FILE": "/nonexistent", "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent"}
    user = {"MODEL_SOURCE_AWS_ACCESS_KEY_ID": server.access_key, "MODEL_SOURCE_AWS_SECRET_ACCESS_KEY": server.secret_key}
    args = ["--upload-url-file", str(grant)]

    denied = run_worker(out, spec=spec, name="digits", env=pod, summary=tmp_path / "a.json", extra_args=args, clean_env=True)
    assert denied.rc == 2 and "spec.model.uri" in denied.last_line and "no S3 credentials" in denied.last_line, denied.last_line

    res = run_worker(out, spec=spec, name="digits", env={**pod, **user}, summary=tmp_path / "b.json", extra_args=args, clean_env=True)
    assert res.rc == 0, res.stderr[-2000:]
    assert [o["Key"] for o in c.list_objects_v2(Bucket="art", Prefix="mo/team-a/worker/")["Contents"]] == [f"mo/team-a/worker/rev2/{ARCHIVE}"]
    got = get_archive(grant_file(tmp_path, "get", presign(operator_client, {"g": ("get", out)}, 600)["g"]), tmp_path / "got", out)
    assert verify_dir(got) == res.summary["artifact"]["sha256"]
    assert server.secret_key not in res.stderr

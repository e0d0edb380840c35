"""URI parsing: schemes, pvc:// resolution under the PVC root, '..' refused, credentials redacted."""

from __future__ import annotations

from pathlib import Path

import pytest

from model_operator.storage import InvalidUriError, parse
from model_operator.storage.errors import StorageError, redact
from model_operator.storage.uri import join


def test_pvc_resolves_under_root(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MODEL_OPERATOR_PVC_ROOT", str(tmp_path))
    loc = parse("pvc://models/digits/model.onnx")
    assert loc.is_local and loc.path == tmp_path / "models" / "digits" / "model.onnx"


def test_pvc_default_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MODEL_OPERATOR_PVC_ROOT", raising=False)
    assert parse("pvc://c/x").path == Path("/mnt/pvc/c/x")


@pytest.mark.parametrize(
    "uri",
    ["pvc://models/../etc/passwd", "pvc://models/a/../../b", "pvc://models/..", "s3://bucket/a/../b", "pvc://Bad_Claim/x", "s3:///key", "ftp://host/x"],
)
def test_refused(uri: str) -> None:
    with pytest.raises(InvalidUriError) as exc:
        parse(uri)
    assert str(exc.value).startswith(uri.split("?")[0])


def test_s3_and_http() -> None:
    loc = parse("s3://my-bucket/a/b.onnx")
    assert (loc.kind, loc.bucket, loc.key) == ("s3", "my-bucket", "a/b.onnx")
    assert parse("https://host/x.onnx").kind == "http"


def test_relative_path_uses_base_dir(tmp_path: Path) -> None:
    assert parse("model.pt", base_dir=tmp_path).path == tmp_path / "model.pt"
    assert parse("/abs/model.pt", base_dir=tmp_path).path == Path("/abs/model.pt")
    assert parse("file:///abs/m.pt").path == Path("/abs/m.pt")


def test_redact_removes_credentials_and_query() -> None:
    assert redact("https://user:secret@host:8443/m.onnx?X-Amz-Signature=abc") == "https://host:8443/m.onnx"
    err = StorageError("https://user:secret@host/m.onnx?token=abc", "HTTP 404")
    assert "secret" not in str(err) and "abc" not in str(err)
    assert str(err) == "https://host/m.onnx: HTTP 404"


def test_join() -> None:
    assert join("s3://b/p/", "a", "/c/") == "s3://b/p/a/c"

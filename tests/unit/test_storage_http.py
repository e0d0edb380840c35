"""http(s) reads against a real HTTP server on loopback: bearer token, 404, size cap, unreachable."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from model_operator.storage import AccessDeniedError, NotFoundError, TooLargeError, UnreachableError, fetch

BODY = b"0123456789" * 1000


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server API
        if self.path.startswith("/private") and self.headers.get("Authorization") != "Bearer s3cret":
            self.send_response(401)
            self.end_headers()
            return
        if self.path.endswith("/missing"):
            self.send_response(404)
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()
        self.wfile.write(BODY)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def test_get(server: str, tmp_path: Path) -> None:
    path = fetch(f"{server}/models/m.onnx", tmp_path)
    assert path.read_bytes() == BODY and path.name == "m.onnx"


def test_bearer_token(server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MODEL_OPERATOR_HTTP_TOKEN", raising=False)
    with pytest.raises(AccessDeniedError, match="HTTP 401.*MODEL_OPERATOR_HTTP_TOKEN"):
        fetch(f"{server}/private/m.onnx", tmp_path)
    monkeypatch.setenv("MODEL_OPERATOR_HTTP_TOKEN", "s3cret")
    assert fetch(f"{server}/private/m.onnx", tmp_path).read_bytes() == BODY


def test_wrong_token_is_not_echoed(server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODEL_OPERATOR_HTTP_TOKEN", "wrong-token")
    with pytest.raises(AccessDeniedError) as exc:
        fetch(f"{server}/private/m.onnx", tmp_path)
    assert "wrong-token" not in str(exc.value)


def test_not_found(server: str, tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match=r"/missing: HTTP 404"):
        fetch(f"{server}/missing", tmp_path)


def test_size_cap(server: str, tmp_path: Path) -> None:
    with pytest.raises(TooLargeError, match="limit"):
        fetch(f"{server}/m.onnx", tmp_path, max_bytes=100)
    assert not list(tmp_path.iterdir()), "no partial download left"


def test_unreachable(tmp_path: Path) -> None:
    with pytest.raises(UnreachableError) as exc:
        fetch("http://127.0.0.1:9/m.onnx", tmp_path)
    assert str(exc.value).startswith("http://127.0.0.1:9/m.onnx: ")

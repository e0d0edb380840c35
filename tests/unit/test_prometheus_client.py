"""The Prometheus client against a local HTTP server that answers like Prometheus, or badly."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from model_operator.scaling.prometheus import Prometheus, PrometheusError

ANSWERS: dict[str, tuple[int, bytes, float]] = {}


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802
        from urllib.parse import parse_qs, urlparse

        query = parse_qs(urlparse(self.path).query)["query"][0]
        code, body, delay = ANSWERS[query]
        if delay:
            time.sleep(delay)
        self.send_response(code)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()


def answer(query: str, payload: object, code: int = 200, delay: float = 0.0) -> None:
    ANSWERS[query] = (code, payload if isinstance(payload, bytes) else json.dumps(payload).encode(), delay)


def test_vector_scalar_and_empty(server: str) -> None:
    answer("v", {"status": "success", "data": {"resultType": "vector", "result": [{"metric": {}, "value": [1, "4.5"]}]}})
    answer("s", {"status": "success", "data": {"resultType": "scalar", "result": [1, "2"]}})
    answer("e", {"status": "success", "data": {"resultType": "vector", "result": []}})
    answer("nan", {"status": "success", "data": {"resultType": "vector", "result": [{"value": [1, "NaN"]}]}})
    prom = Prometheus(server)
    assert prom.query("v") == 4.5 and prom.query("s") == 2.0
    assert prom.query("e") is None and prom.query("nan") is None


@pytest.mark.parametrize(
    ("payload", "code", "cause"),
    [
        (b"<html>oops</html>", 502, "garbage"),
        ({"status": "error", "error": "parse error at char 3"}, 400, "error"),
        ({"status": "success", "data": {"resultType": "vector", "result": [{"value": "x"}]}}, 200, "garbage"),
        ({"status": "success", "data": {"resultType": "matrix", "result": []}}, 200, "garbage"),
    ],
)
def test_bad_answers_raise_with_a_cause(server: str, payload: object, code: int, cause: str) -> None:
    answer("bad", payload, code)
    with pytest.raises(PrometheusError) as info:
        Prometheus(server).query("bad")
    assert info.value.cause == cause


def test_slow_and_unreachable(server: str) -> None:
    answer("slow", {"status": "success", "data": {"resultType": "scalar", "result": [1, "1"]}}, delay=1.0)
    with pytest.raises(PrometheusError) as info:
        Prometheus(server, timeout=0.2).query("slow")
    assert info.value.cause == "timeout"
    with pytest.raises(PrometheusError) as info:
        Prometheus("http://127.0.0.1:1", timeout=1).query("x")
    assert info.value.cause == "unreachable" and "127.0.0.1:1" in str(info.value)


def _by(server: str, query: str, timeout: float = 5.0) -> dict[tuple[str, ...], float]:
    import asyncio

    from model_operator.scaling.prometheus import AsyncPrometheus

    return asyncio.run(AsyncPrometheus(server, timeout=timeout).query_by(query, ("namespace", "md")))


def test_async_vector_by_labels(server: str) -> None:
    answer("fleet", {"status": "success", "data": {"resultType": "vector", "result": [
        {"metric": {"namespace": "a", "md": "x"}, "value": [1, "4.5"]},
        {"metric": {"namespace": "b", "md": "x"}, "value": [1, "7"]},
        {"metric": {"namespace": "a"}, "value": [1, "9"]},  # no md: pods not the operator's
        {"metric": {"namespace": "a", "md": "nan"}, "value": [1, "NaN"]},
    ]}})
    assert _by(server, "fleet") == {("a", "x"): 4.5, ("b", "x"): 7.0}


@pytest.mark.parametrize(
    ("payload", "code", "cause"),
    [
        (b"<html>oops</html>", 502, "garbage"),
        ({"status": "error", "error": "parse error at char 3"}, 400, "error"),
        ({"status": "success", "data": {"resultType": "vector", "result": [{"metric": {}, "value": "x"}]}}, 200, "garbage"),
        ({"status": "success", "data": {"resultType": "scalar", "result": [1, "2"]}}, 200, "garbage"),
    ],
)
def test_async_bad_answers_raise_with_a_cause(server: str, payload: object, code: int, cause: str) -> None:
    answer("abad", payload, code)
    with pytest.raises(PrometheusError) as info:
        _by(server, "abad")
    assert info.value.cause == cause


def test_async_slow_and_unreachable(server: str) -> None:
    answer("aslow", {"status": "success", "data": {"resultType": "vector", "result": []}}, delay=1.0)
    with pytest.raises(PrometheusError) as info:
        _by(server, "aslow", timeout=0.2)
    assert info.value.cause == "timeout"
    with pytest.raises(PrometheusError) as info:
        _by("http://127.0.0.1:1", "x", timeout=1)
    assert info.value.cause == "unreachable" and "127.0.0.1:1" in str(info.value)

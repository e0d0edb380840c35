"""The operator's /metrics endpoint: prometheus_client's registry, then the per-ModelDeployment
families written piece by piece (metrics.ModelDeploymentCollector says why), gzipped as they go
when the scraper accepts it, so a scrape of a large fleet holds a few hundred objects' lines at
a time rather than the whole text."""

from __future__ import annotations

import http.server
import threading
import zlib
from collections.abc import Iterable, Iterator

from prometheus_client import REGISTRY, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from . import metrics


def scrape() -> Iterator[bytes]:
    """The whole exposition, in pieces."""
    yield generate_latest(REGISTRY)
    yield from metrics.MODELDEPLOYMENTS.exposition()


def gzipped(pieces: Iterable[bytes]) -> Iterator[bytes]:
    packer = zlib.compressobj(wbits=31)  # 31: the gzip container
    for piece in pieces:
        out = packer.compress(piece)
        if out:
            yield out
    yield packer.flush()


class _Handler(http.server.BaseHTTPRequestHandler):
    # HTTP/1.0: the body ends when the connection closes, so no length is needed up front.
    protocol_version = "HTTP/1.0"

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        if self.path.split("?")[0] == "/favicon.ico":
            self.send_error(404)
            return
        gzip = "gzip" in (self.headers.get("Accept-Encoding") or "")
        self.send_response(200)
        self.send_header("Content-Type", CONTENT_TYPE_PLAIN_0_0_4)
        if gzip:
            self.send_header("Content-Encoding", "gzip")
        self.end_headers()
        try:
            for piece in gzipped(scrape()) if gzip else scrape():
                self.wfile.write(piece)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the scraper gave up (its timeout); the next scrape starts afresh

    def log_message(self, *_: object) -> None:
        pass  # a line per scrape is noise in the operator's log


def serve(port: int, addr: str = "0.0.0.0") -> http.server.ThreadingHTTPServer:
    """Serve /metrics on `port` from a daemon thread, as prometheus_client.start_http_server does."""
    server = http.server.ThreadingHTTPServer((addr, port), _Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
    return server

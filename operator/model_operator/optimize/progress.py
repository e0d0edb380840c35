"""Where a running worker is, for the operator to show while the Job runs (status.optimization.progress).

The worker only answers GET /progress on its own port (`optimize --progress-port`); the operator
reads it from the pod's IP. The worker needs no API access at all: it never writes the
ModelDeployment, so a worker image cannot change what the operator reports about other things."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

PORT = 8090
LATEST = 3  # candidate results kept for status


class Progress:
    """The worker's position: step k of n, candidate k of n, elapsed time, the latest results."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._started = time.monotonic()
        self._state: dict[str, Any] = {"step": "starting", "stepNumber": 0, "steps": 0, "candidate": 0, "candidates": 0, "latest": []}

    def update(self, **fields: Any) -> None:
        with self._lock:
            self._state.update(fields)

    def candidate_done(self, entry: dict[str, Any]) -> None:
        keep = {k: entry.get(k) for k in ("name", "passed", "latencyMs", "sizeBytes", "quality", "reason") if entry.get(k) is not None}
        with self._lock:
            self._state["latest"] = [*self._state["latest"], keep][-LATEST:]

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            out = json.loads(json.dumps(self._state, default=str))
        out["elapsedSeconds"] = int(time.monotonic() - self._started)
        return out


PROGRESS = Progress()


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
        if self.path.split("?")[0] != "/progress":
            self.send_error(404)
            return
        body = json.dumps(PROGRESS.snapshot()).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's signature
        return  # one line per poll would drown the worker's log


def serve(port: int, host: str = "0.0.0.0") -> ThreadingHTTPServer:  # noqa: S104 - the operator reads it from the pod IP
    server = ThreadingHTTPServer((host, port), _Handler)
    threading.Thread(target=server.serve_forever, name="progress", daemon=True).start()
    return server


def summary(p: dict[str, Any]) -> str:
    """One short line for `kubectl get md`: "step 4/8 candidates 2/5, 40s"."""
    parts = [f"step {p.get('stepNumber', 0)}/{p.get('steps', 0)} {str(p.get('step', '')).split(' (')[0]}"]
    if p.get("candidates"):
        parts[0] += f" {p.get('candidate', 0)}/{p['candidates']}"
    parts.append(f"{int(p.get('elapsedSeconds') or 0)}s")
    return ", ".join(parts)

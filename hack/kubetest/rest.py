"""A small dict-in, dict-out client for the API server, used by the harness.

The harness (node registration, the pod runner) works on raw JSON objects and
status patches; the generated `kubernetes` client models would only get in the
way there. Tests and the operator use the official client.
"""

from __future__ import annotations

import base64
import json
import tempfile
import threading
from pathlib import Path
from typing import Any, Iterator, Optional

import requests
import yaml


class ApiError(Exception):
    """An error status from the API server; ``status`` keeps the HTTP code."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message


class Kube:
    def __init__(self, server: str, ca: str, cert: str, key: str, timeout: float = 30.0) -> None:
        self.server = server.rstrip("/")
        self.timeout = timeout
        self._tls = (ca, (cert, key))
        self._local = threading.local()

    @classmethod
    def from_kubeconfig(cls, path: str | Path) -> "Kube":
        """Read a kubeconfig's current context (client-certificate auth only)."""
        cfg = yaml.safe_load(Path(path).read_text())
        ctx_name = cfg["current-context"]
        ctx = next(c["context"] for c in cfg["contexts"] if c["name"] == ctx_name)
        cluster = next(c["cluster"] for c in cfg["clusters"] if c["name"] == ctx["cluster"])
        user = next(u["user"] for u in cfg["users"] if u["name"] == ctx["user"])
        base = Path(path).parent

        def materialise(file_key: str, data_key: str, section: dict[str, Any]) -> str:
            if file_key in section:
                return str(base / section[file_key])
            # Inline data: requests wants files, so spill it into a private temp file.
            f = tempfile.NamedTemporaryFile(delete=False, suffix=".pem")
            f.write(base64.b64decode(section[data_key]))
            f.close()
            return f.name

        return cls(
            cluster["server"],
            materialise("certificate-authority", "certificate-authority-data", cluster),
            materialise("client-certificate", "client-certificate-data", user),
            materialise("client-key", "client-key-data", user),
        )

    @property
    def _session(self) -> requests.Session:
        # requests.Session is not thread-safe; the pod runner calls from many threads.
        s = getattr(self._local, "session", None)
        if s is None:
            s = requests.Session()
            # Environment CA bundles and proxies are for the outside world; with
            # trust_env they would override our CA (a known requests quirk).
            s.trust_env = False
            s.verify, s.cert = self._tls
            self._local.session = s
        return s

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        params: Optional[dict[str, Any]] = None,
        content_type: str = "application/json",
        timeout: Optional[float] = None,
    ) -> Any:
        data = None if body is None else json.dumps(body)
        headers = {"Content-Type": content_type, "Accept": "application/json"}
        resp = self._session.request(
            method,
            self.server + path,
            data=data,
            params=params,
            headers=headers,
            timeout=timeout or self.timeout,
        )
        if resp.status_code >= 400:
            try:
                status = resp.json()
                raise ApiError(resp.status_code, status.get("reason", ""), status.get("message", resp.text))
            except ValueError:
                raise ApiError(resp.status_code, resp.reason, resp.text) from None
        return resp.json() if resp.content else None

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params=params or None)

    def create(self, path: str, body: Any) -> Any:
        return self.request("POST", path, body)

    def replace(self, path: str, body: Any) -> Any:
        return self.request("PUT", path, body)

    def patch(self, path: str, body: Any, kind: str = "merge") -> Any:
        ct = {
            "merge": "application/merge-patch+json",
            "strategic": "application/strategic-merge-patch+json",
            "json": "application/json-patch+json",
        }[kind]
        return self.request("PATCH", path, body, content_type=ct)

    def apply(self, path: str, body: Any, manager: str = "kubetest") -> Any:
        """Server-side apply ``body`` at ``path`` (the object's own URL)."""
        data = json.dumps(body)
        resp = self._session.patch(
            self.server + path,
            data=data,
            params={"fieldManager": manager, "force": "true"},
            headers={"Content-Type": "application/apply-patch+yaml", "Accept": "application/json"},
            timeout=self.timeout,
        )
        if resp.status_code >= 400:
            status = resp.json()
            raise ApiError(resp.status_code, status.get("reason", ""), status.get("message", ""))
        return resp.json()

    def delete(self, path: str, body: Any = None) -> Any:
        return self.request("DELETE", path, body)

    def watch(self, path: str, resource_version: str, timeout_seconds: int = 60, **params: Any) -> Iterator[dict[str, Any]]:
        """Yield watch events (``{"type", "object"}``) until the server ends the watch."""
        query = dict(params, watch="true", resourceVersion=resource_version, timeoutSeconds=timeout_seconds,
                     allowWatchBookmarks="true")
        with self._session.get(
            self.server + path, params=query, stream=True, timeout=(self.timeout, timeout_seconds + 30)
        ) as resp:
            if resp.status_code >= 400:
                raise ApiError(resp.status_code, resp.reason, resp.text)
            for line in resp.iter_lines():
                if line:
                    yield json.loads(line)

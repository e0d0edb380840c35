"""Readiness, liveness and startup probes, run the way the kubelet runs them."""

from __future__ import annotations

import http.client
import os
import shutil
import socket
import ssl
import subprocess
from dataclasses import dataclass
from typing import Any, Optional


@dataclass(frozen=True)
class ProbeTiming:
    initial_delay: float
    period: float
    timeout: float
    success_threshold: int
    failure_threshold: int

    @classmethod
    def of(cls, probe: dict[str, Any]) -> "ProbeTiming":
        return cls(
            initial_delay=float(probe.get("initialDelaySeconds", 0)),
            period=float(probe.get("periodSeconds", 10)),
            timeout=float(probe.get("timeoutSeconds", 1)),
            success_threshold=int(probe.get("successThreshold", 1)),
            failure_threshold=int(probe.get("failureThreshold", 3)),
        )


def resolve_port(port: Any, container: dict[str, Any]) -> int:
    """A probe port is a number or the name of one of the container's ports."""
    if isinstance(port, int) or (isinstance(port, str) and port.isdigit()):
        return int(port)
    for p in container.get("ports", []) or []:
        if p.get("name") == port:
            return int(p["containerPort"])
    raise ValueError(f"port {port!r} is not a container port")


def run_probe(
    probe: dict[str, Any],
    container: dict[str, Any],
    pod_ip: str,
    pid: Optional[int],
    env: dict[str, str],
) -> tuple[bool, str]:
    """One probe attempt: (success, message for the Unhealthy event)."""
    timeout = float(probe.get("timeoutSeconds", 1))
    try:
        if "httpGet" in probe:
            h = probe["httpGet"]
            host = h.get("host") or pod_ip
            port = resolve_port(h.get("port"), container)
            path = h.get("path") or "/"
            if (h.get("scheme") or "HTTP").upper() == "HTTPS":
                conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                    host, port, timeout=timeout, context=ssl._create_unverified_context()
                )
            else:
                conn = http.client.HTTPConnection(host, port, timeout=timeout)
            headers = {"User-Agent": "kube-probe/local"}
            headers.update({x["name"]: x["value"] for x in h.get("httpHeaders", []) or []})
            try:
                conn.request("GET", path, headers=headers)
                resp = conn.getresponse()
                resp.read(10 * 1024)
            finally:
                conn.close()
            ok = 200 <= resp.status < 400
            return ok, "" if ok else f"HTTP probe failed with statuscode: {resp.status}"
        if "tcpSocket" in probe or "grpc" in probe:
            # gRPC probes are approximated by a TCP connect: no gRPC health
            # client is assumed to be installed (documented limit).
            t = probe.get("tcpSocket") or probe["grpc"]
            host = t.get("host") or pod_ip
            port = resolve_port(t.get("port"), container)
            with socket.create_connection((host, port), timeout=timeout):
                return True, ""
        if "exec" in probe:
            argv = list(probe["exec"].get("command") or [])
            if pid is not None and os.geteuid() == 0 and shutil.which("nsenter"):
                # Run inside the container's mount namespace so its volumes are visible.
                argv = ["nsenter", "-t", str(pid), "-m", "-u", "--", *argv]
            r = subprocess.run(argv, env=env, capture_output=True, timeout=timeout, text=True)
            out = (r.stdout + r.stderr).strip()[-1024:]
            return r.returncode == 0, "" if r.returncode == 0 else f"command failed: exit {r.returncode}: {out}"
    except subprocess.TimeoutExpired:
        return False, f"command timed out after {timeout:g}s"
    except (OSError, http.client.HTTPException, ValueError) as e:
        return False, f"probe failed: {e}"
    return False, "unsupported probe handler"

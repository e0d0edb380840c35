"""A small client for Prometheus' HTTP query API. Every failure is a PrometheusError with a
cause a user can act on (unreachable, timeout, bad answer), never a silent zero."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import requests


class PrometheusError(RuntimeError):
    def __init__(self, cause: str, message: str) -> None:
        super().__init__(message)
        self.cause = cause


@dataclass(frozen=True)
class Prometheus:
    url: str
    timeout: float = 5.0

    def query(self, promql: str) -> float | None:
        """Instant query returning one scalar; None when the query matches no series (no data)."""
        try:
            resp = requests.get(
                f"{self.url.rstrip('/')}/api/v1/query",
                params={"query": promql, "timeout": f"{int(self.timeout * 1000)}ms"},  # Prometheus durations take no decimals
                timeout=self.timeout,
            )
        except requests.Timeout:
            raise PrometheusError("timeout", f"Prometheus at {self.url} did not answer within {self.timeout:g}s") from None
        except requests.RequestException as exc:
            raise PrometheusError("unreachable", f"Prometheus at {self.url} is unreachable: {type(exc).__name__}") from None
        try:
            payload = resp.json()
        except ValueError:
            raise PrometheusError("garbage", f"Prometheus at {self.url} answered HTTP {resp.status_code} with a non-JSON body") from None
        if not isinstance(payload, dict) or payload.get("status") != "success":
            error = payload.get("error") if isinstance(payload, dict) else None
            raise PrometheusError("error", f"Prometheus query failed (HTTP {resp.status_code}): {error or 'malformed answer'}")
        data = payload.get("data") or {}
        result: Any = data.get("result")
        try:
            if data.get("resultType") == "scalar":
                value = float(result[1])
            elif data.get("resultType") == "vector":
                if not result:
                    return None
                value = float(result[0]["value"][1])
            else:
                raise PrometheusError("garbage", f"Prometheus returned an unexpected result type {data.get('resultType')!r}")
        except (TypeError, KeyError, IndexError, ValueError):
            raise PrometheusError("garbage", "Prometheus returned a malformed sample") from None
        return value if math.isfinite(value) else None

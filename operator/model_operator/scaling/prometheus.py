"""A small client for Prometheus' HTTP query API. Every failure is a PrometheusError with a
cause a user can act on (unreachable, timeout, bad answer), never a silent zero.

`Prometheus.query` answers one scalar, blocking (the reconciler's health readings);
`AsyncPrometheus.query_by` answers a whole vector keyed by labels, on the operator's event loop
(the fleet-wide scaler: one query for every ModelDeployment, no thread held while it waits)."""

from __future__ import annotations

import asyncio
import json
import math
from dataclasses import dataclass
from typing import Any

import aiohttp
import requests


class PrometheusError(RuntimeError):
    def __init__(self, cause: str, message: str) -> None:
        super().__init__(message)
        self.cause = cause


def _params(promql: str, timeout: float) -> dict[str, str]:
    return {"query": promql, "timeout": f"{int(timeout * 1000)}ms"}  # Prometheus durations take no decimals


def _data(status: int, payload: Any) -> dict[str, Any]:
    """The `data` of a successful answer, or the PrometheusError saying what was wrong."""
    if not isinstance(payload, dict) or payload.get("status") != "success":
        error = payload.get("error") if isinstance(payload, dict) else None
        raise PrometheusError("error", f"Prometheus query failed (HTTP {status}): {error or 'malformed answer'}")
    data: dict[str, Any] = payload.get("data") or {}
    return data


def _garbage(url: str, status: int) -> PrometheusError:
    return PrometheusError("garbage", f"Prometheus at {url} answered HTTP {status} with a non-JSON body")


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def scalar_of(data: dict[str, Any]) -> float | None:
    """One number from an instant query's data; None when no series matched (no data)."""
    result: Any = data.get("result")
    try:
        if data.get("resultType") == "scalar":
            return _finite(float(result[1]))
        if data.get("resultType") == "vector":
            return _finite(float(result[0]["value"][1])) if result else None
    except (TypeError, KeyError, IndexError, ValueError):
        raise PrometheusError("garbage", "Prometheus returned a malformed sample") from None
    raise PrometheusError("garbage", f"Prometheus returned an unexpected result type {data.get('resultType')!r}")


def vector_of(data: dict[str, Any], labels: tuple[str, ...]) -> dict[tuple[str, ...], float]:
    """An instant vector as {label values: value}; samples lacking a label or not finite are left out."""
    if data.get("resultType") != "vector":
        raise PrometheusError("garbage", f"Prometheus returned an unexpected result type {data.get('resultType')!r}")
    out: dict[tuple[str, ...], float] = {}
    try:
        for sample in data.get("result") or []:
            metric = sample.get("metric") or {}
            key = tuple(str(metric.get(label) or "") for label in labels)
            value = _finite(float(sample["value"][1]))
            if all(key) and value is not None:
                out[key] = value
    except (TypeError, KeyError, IndexError, ValueError, AttributeError):
        raise PrometheusError("garbage", "Prometheus returned a malformed sample") from None
    return out


@dataclass(frozen=True)
class Prometheus:
    url: str
    timeout: float = 5.0

    def query(self, promql: str) -> float | None:
        """Instant query returning one scalar; None when the query matches no series (no data)."""
        return scalar_of(self._data(promql))

    def query_by(self, promql: str, labels: tuple[str, ...]) -> dict[tuple[str, ...], float]:
        """Instant query answering a vector, keyed by the values of `labels`."""
        return vector_of(self._data(promql), labels)

    def _data(self, promql: str) -> dict[str, Any]:
        try:
            resp = requests.get(f"{self.url.rstrip('/')}/api/v1/query", params=_params(promql, self.timeout), timeout=self.timeout)
        except requests.Timeout:
            raise PrometheusError("timeout", f"Prometheus at {self.url} did not answer within {self.timeout:g}s") from None
        except requests.RequestException as exc:
            raise PrometheusError("unreachable", f"Prometheus at {self.url} is unreachable: {type(exc).__name__}") from None
        try:
            payload = resp.json()
        except ValueError:
            raise _garbage(self.url, resp.status_code) from None
        return _data(resp.status_code, payload)


@dataclass(frozen=True)
class AsyncPrometheus:
    url: str
    timeout: float = 5.0

    async def query_by(self, promql: str, labels: tuple[str, ...]) -> dict[tuple[str, ...], float]:
        """Instant query answering a vector, keyed by the values of `labels`."""
        timeout = aiohttp.ClientTimeout(total=self.timeout)
        try:
            # A session per query: a few queries per poll for the whole fleet, and nothing is
            # left bound to an event loop between polls (KopfRunner restarts loops in tests).
            async with aiohttp.ClientSession(timeout=timeout) as session, \
                    session.get(f"{self.url.rstrip('/')}/api/v1/query", params=_params(promql, self.timeout)) as resp:
                status = resp.status
                body = await resp.read()
        except asyncio.TimeoutError:
            raise PrometheusError("timeout", f"Prometheus at {self.url} did not answer within {self.timeout:g}s") from None
        except aiohttp.ClientError as exc:
            raise PrometheusError("unreachable", f"Prometheus at {self.url} is unreachable: {type(exc).__name__}") from None
        try:
            payload = json.loads(body)
        except ValueError:
            raise _garbage(self.url, status) from None
        return vector_of(_data(status, payload), labels)

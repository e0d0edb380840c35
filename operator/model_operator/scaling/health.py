"""Serving health from Prometheus, as a pure verdict: the error ratio against the spec's
monitoring.maxErrorRatio, and the p99 latency against monitoring.p99LatencyMs where Triton
exports its latency histogram. No traffic is no evidence either way."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Health:
    healthy: bool | None  # None: nothing to judge (no traffic, no data)
    reason: str
    message: str


def judge(
    *,
    request_rate: float | None,
    error_ratio: float | None,
    p99_ms: float | None,
    max_error_ratio: float,
    p99_objective_ms: float | None,
) -> Health:
    if not request_rate:
        return Health(None, "NoTraffic", "no requests in the query window")
    if error_ratio is not None and error_ratio > max_error_ratio:
        return Health(False, "ErrorRatioHigh",
                      f"error ratio {error_ratio:.3f} over the last window is above monitoring.maxErrorRatio {max_error_ratio:g}")
    if p99_objective_ms is not None and p99_ms is not None and p99_ms == p99_ms and p99_ms > p99_objective_ms:
        return Health(False, "LatencyAboveObjective",
                      f"p99 latency {p99_ms:.1f} ms is above monitoring.p99LatencyMs {p99_objective_ms:g}")
    parts = [f"error ratio {error_ratio or 0.0:.3f}"]
    if p99_ms is not None and p99_ms == p99_ms:
        parts.append(f"p99 {p99_ms:.1f} ms")
    return Health(True, "WithinObjectives", ", ".join(parts) + f" at {request_rate:.1f} req/s")

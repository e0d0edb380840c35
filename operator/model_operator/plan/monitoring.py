"""The monitoring part of the plan: the ServiceMonitor, status.health from the Prometheus
readings the controller took, and status.quality from the golden-set probe containers' gauges."""

from __future__ import annotations

from typing import Any

from ..api.types import ModelDeploymentSpec
from ..resources import serving as serving_builder
from ..scaling import health as health_policy
from .core import SERVICE_MONITOR, Draft


def plan_service_monitor(d: Draft, spec: ModelDeploymentSpec) -> None:
    if spec.monitoring.service_monitor and SERVICE_MONITOR in d.observed.served:
        d.want_existing(serving_builder.build_service_monitor(d.name, d.namespace, probe=serving_builder.probes_quality(spec)), optional=True)


def _rounded(v: float | None) -> float | None:
    return None if v is None or v != v else float(f"{v:.3g}")  # NaN (an empty histogram) is no value


def plan_health(d: Draft, spec: ModelDeploymentSpec) -> dict[str, Any] | None:
    """status.health from this reconcile's readings; the last verdict when none were taken."""
    error = d.observed.metrics_errors.get("all")
    if error is not None:
        return {"healthy": None, "reason": "MetricsUnavailable", "message": error}
    readings = d.observed.metrics.get("all")
    if readings is None:
        old: dict[str, Any] | None = d.old_status.get("health")
        return old
    rate = readings.request_rate
    error_ratio, p99 = (readings.error_ratio, readings.latency_ms) if rate else (None, None)
    verdict = health_policy.judge(request_rate=rate, error_ratio=error_ratio, p99_ms=p99,
                                  max_error_ratio=spec.monitoring.max_error_ratio, p99_objective_ms=spec.monitoring.p99_latency_ms)
    return {"healthy": verdict.healthy, "reason": verdict.reason, "message": verdict.message,
            "requestRate": _rounded(rate), "errorRatio": _rounded(error_ratio), "p99LatencyMs": _rounded(p99)}


# A probe container probes every goldenProbe.intervalSeconds; Prometheus scrapes it and the operator
# reads the fleet's sample every few seconds. A verdict whose oldest replica's probe is older than
# STALE_PROBES intervals plus STALE_SLACK seconds is no verdict: the probe stopped (a pod stuck, a
# container crash-looping, scraping broken) and status.quality must not go on claiming it.
STALE_PROBES, STALE_SLACK = 3, 60.0
# While the verdict and its numbers stay the same, status.quality (its time) is rewritten at most this
# often: at 10,000 ModelDeployments a write per probe (60 s) would be 167 writes/s, hourly is 2.8/s.
# Staleness is judged on each fresh reading, not on this time.
QUALITY_REFRESH_SECONDS = 3600.0


def stale_after(interval_seconds: float) -> float:
    return STALE_PROBES * interval_seconds + STALE_SLACK


def judge_quality(
    rows: dict[str, dict[str, float]] | None, error: str | None, revision: str, now: float, interval_seconds: float,
) -> tuple[dict[str, Any], str, str]:
    """status.quality, the QualityDegraded status ("True", "False", "Unknown") and its reason, from
    the probe containers' readings of the served revision (the worst replica's verdict, the oldest
    replica's probe time). Missing, failing or stale readings are "Unknown", never a pass."""
    if error is not None:
        return {"passed": None, "revision": revision, "reason": f"Prometheus: {error}"}, "Unknown", "MetricsUnavailable"
    row = (rows or {}).get(revision)
    if not row or "time" not in row:
        return ({"passed": None, "revision": revision, "reason": f"no golden-probe readings for revision {revision} in Prometheus yet"},
                "Unknown", "NoProbeData")
    quality: dict[str, Any] = {"time": row["time"], "passed": None, "revision": revision}
    for key in ("agreement", "cosine"):
        if key in row:
            # Four decimals: a GPU's last-digit jitter must not rewrite status.quality on every probe.
            quality[key] = round(row[key], 4)
    if "samples" in row:
        quality["samples"] = int(row["samples"])
    age = now - row["time"]
    if age > stale_after(interval_seconds):
        return ({**quality, "reason": f"no golden probe for over {stale_after(interval_seconds):g}s (probes every {interval_seconds:g}s)"},
                "Unknown", "ProbeStale")
    if row.get("passed") == 0:
        return {**quality, "passed": False, "reason": _drift_reason(row)}, "True", "GoldenSetDrift"
    if row.get("ok") != 1 or row.get("passed") != 1:
        return ({**quality, "reason": "a replica's golden probe could not compare its answers (its `probe` container's log says why)"},
                "Unknown", "ProbeFailing")
    return {**quality, "passed": True, "reason": "every replica's answers match the report"}, "False", "GoldenSetMatches"


def _drift_reason(row: dict[str, float]) -> str:
    numbers = [f"{k} {row[k]:.4g}" for k in ("agreement", "cosine") if k in row]
    return "a replica's live answers fail the quality gate" + (f" (worst {', '.join(numbers)})" if numbers else "")


def plan_quality(d: Draft, spec: ModelDeploymentSpec) -> tuple[dict[str, Any], str, str] | None:
    """status.quality and QualityDegraded from this reconcile's reading of the probe containers'
    gauges; without a reading, the last verdict until it goes stale. None: nothing to say yet."""
    old: dict[str, Any] = dict(d.old_status.get("quality") or {})
    stable = (d.old_status.get("rollout") or {}).get("stable") or {}
    revision = str(stable.get("revision") or "")
    interval = spec.monitoring.golden_probe.interval_seconds
    if d.observed.quality is None and d.observed.quality_error is None:
        if not old or old.get("passed") is None or not old.get("time") or d.now - float(old["time"]) <= stale_after(interval):
            return None
        rows: dict[str, dict[str, float]] | None = {str(old.get("revision") or ""): {"time": float(old["time"])}}
        revision = str(old.get("revision") or "")
    else:
        rows = d.observed.quality
    if not revision:
        return None
    quality, status, reason = judge_quality(rows, d.observed.quality_error, revision, d.now, interval)
    if _same_verdict(old, quality) and d.now - float(old.get("time") or 0) < QUALITY_REFRESH_SECONDS:
        quality = old
    return quality, status, reason


def _same_verdict(old: dict[str, Any], new: dict[str, Any]) -> bool:
    return all(old.get(k) == new.get(k) for k in ("passed", "revision", "reason", "agreement", "cosine", "samples"))

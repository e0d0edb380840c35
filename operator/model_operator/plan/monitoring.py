"""The monitoring part of the plan: the ServiceMonitor, status.health from the Prometheus
readings the controller took, and the golden-set probe Job with status.quality."""

from __future__ import annotations

from typing import Any

from ..api.types import ModelDeploymentSpec
from ..config import OperatorConfig
from ..resources import common as names
from ..resources import serving as serving_builder
from ..resources import store_jobs
from ..scaling import health as health_policy
from .core import SERVICE_MONITOR, Draft
from .optimization import worker_summary


def plan_service_monitor(d: Draft, spec: ModelDeploymentSpec) -> None:
    if spec.monitoring.service_monitor and SERVICE_MONITOR in d.observed.served:
        d.want_existing(serving_builder.build_service_monitor(d.name, d.namespace), optional=True)


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


def plan_probe(d: Draft, spec: ModelDeploymentSpec, config: OperatorConfig) -> dict[str, Any] | None:
    """Run the golden-set probe Job on its interval; fold a finished one into status.quality."""
    probe_name = names.truncate(d.name, "-probe")
    job = d.observed.job(probe_name)
    if job is not None and not d.owns(job):
        d.conflict("Job", probe_name, job)
        return None
    if job is not None:
        return _probe_finished(d, job, probe_name) if job.get("succeeded") or job.get("finishedFailed") else None
    quality = dict(d.old_status.get("quality") or {})
    if quality.get("time") and d.now - float(quality["time"]) < spec.monitoring.golden_probe.interval_seconds:
        return None
    stable = (d.old_status.get("rollout") or {}).get("stable") or {}
    ready = [
        f"{p['podIP']}:{names.HTTP_PORT}"
        for p in d.observed.pods
        if p.get("ready") and p.get("podIP") and not p.get("deleting")
        and p.get("labels", {}).get(names.LABEL_COMPONENT) == "triton"
        and p.get("labels", {}).get(names.LABEL_REVISION) == stable.get("revision")
    ]
    if not stable.get("uri") or not ready:
        return None
    gate = spec.optimization.quality_gate.model_dump(mode="json", by_alias=True, exclude_none=True)
    d.want(store_jobs.build_probe_job(
        d.name, d.namespace, config, artifact_uri=stable["uri"], endpoints=sorted(ready)[:8],
        samples=spec.monitoring.golden_probe.samples, gate=gate, revision=stable.get("revision", ""),
    ))
    return None


def _probe_finished(d: Draft, job: dict[str, Any], probe_name: str) -> dict[str, Any]:
    quality = dict(d.old_status.get("quality") or {})
    summary = worker_summary(d.observed.job_pods(probe_name))
    d.drop("batch/v1", "Job", probe_name)
    if summary is None:
        return {**quality, "time": d.now, "passed": None, "reason": job.get("failureMessage") or "the probe left no report"}
    result = {k: v for k, v in summary.items() if k in ("agreement", "cosine", "maxAbsError", "samples", "endpoints", "revision")}
    passed = summary.get("passed") if summary.get("ok") else None
    d.plan.golden_agreement = float(summary.get("agreement") or 0.0)
    return {**result, "time": d.now, "passed": passed, "reason": summary.get("reason") or ""}

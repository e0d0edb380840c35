"""The operator's own Prometheus metrics."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Final

from prometheus_client import Counter, Gauge, Histogram

RECONCILES: Final = Counter(
    "model_operator_reconcile_total", "Reconciles by handler and result.", ["handler", "result"]
)
RECONCILE_SECONDS: Final = Histogram(
    "model_operator_reconcile_duration_seconds", "Reconcile duration by handler.", ["handler"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
RECONCILE_ERRORS: Final = Counter(
    "model_operator_reconcile_errors_total", "Reconcile errors by handler and error class.", ["handler", "error"]
)
JOBS_STARTED: Final = Counter("model_operator_jobs_started_total", "Optimization Jobs created.")
JOBS_FAILED: Final = Counter("model_operator_jobs_failed_total", "Optimization Jobs that failed.")
JOBS_SUCCEEDED: Final = Counter("model_operator_jobs_succeeded_total", "Optimization Jobs that succeeded.")
API_WRITES: Final = Counter("model_operator_api_writes_total", "Writes the operator sent to the API server.", ["kind", "verb"])
PHASES: Final = Gauge("model_operator_modeldeployments", "ModelDeployments by phase.", ["namespace", "phase"])
SCALE_DECISIONS: Final = Counter(
    "model_operator_scale_decisions_total", "Scale changes made by the built-in autoscaler.", ["direction"]
)
CONDITION: Final = Gauge(
    "model_operator_condition", "ModelDeployment conditions: 1 for the current status of each type.",
    ["namespace", "modeldeployment", "type", "status"],
)
_MD = ["namespace", "modeldeployment"]
DESIRED_REPLICAS: Final = Gauge("model_operator_desired_replicas", "Replicas the spec asks for.", _MD)
READY_REPLICAS: Final = Gauge("model_operator_ready_replicas", "Ready Triton replicas.", _MD)
MAX_REPLICAS: Final = Gauge("model_operator_max_replicas", "autoscaling.maxReplicas (0 without autoscaling).", _MD)
ARTIFACT_SIZE: Final = Gauge(
    "model_operator_artifact_size_bytes", "Model size before and after optimization.", [*_MD, "stage"]
)
OPTIMIZATION_LATENCY: Final = Gauge(
    "model_operator_optimization_latency_seconds", "Measured model latency before and after optimization.", [*_MD, "stage"]
)
PER_MD_GAUGES: Final = (DESIRED_REPLICAS, READY_REPLICAS, MAX_REPLICAS, ARTIFACT_SIZE, OPTIMIZATION_LATENCY, CONDITION)


class PhaseTally:
    """ModelDeployments by namespace and phase. Reconciles run in kopf's thread pool, many at once:
    each phase change moves two counts by one under a lock. (Rebuilding the gauge from a shared
    dict raced with the threads adding to it, cost O(fleet) per change, and let a scrape between
    the clear and the refill see no series.)"""

    def __init__(self, gauge: Gauge = PHASES) -> None:
        self._gauge = gauge
        self._phases: dict[tuple[str, str], str] = {}
        self._lock = threading.Lock()

    def set(self, key: tuple[str, str], phase: str | None) -> None:
        with self._lock:
            previous = self._phases.get(key)
            if previous == phase:
                return
            if previous:
                self._gauge.labels(key[0], previous).dec()
            if phase:
                self._phases[key] = phase
                self._gauge.labels(key[0], phase).inc()
            else:
                self._phases.pop(key, None)

    def forget(self, key: tuple[str, str]) -> None:
        self.set(key, None)


def export_modeldeployment(namespace: str, name: str, status: dict, max_replicas: int) -> None:
    """Per-ModelDeployment gauges from the status the reconcile computed."""
    DESIRED_REPLICAS.labels(namespace, name).set(status.get("replicas") or 0)
    READY_REPLICAS.labels(namespace, name).set(status.get("readyReplicas") or 0)
    MAX_REPLICAS.labels(namespace, name).set(max_replicas)
    artifact = status.get("artifact") or {}
    for stage, key in (("original", "originalSizeBytes"), ("optimized", "sizeBytes")):
        if artifact.get(key) is not None:
            ARTIFACT_SIZE.labels(namespace, name, stage).set(artifact[key])
    opt = status.get("optimization") or {}
    for stage, key in (("before", "latencyMsBefore"), ("after", "latencyMsAfter")):
        if opt.get(key) is not None:
            OPTIMIZATION_LATENCY.labels(namespace, name, stage).set(opt[key] / 1000.0)
    for c in status.get("conditions") or []:
        for value in ("True", "False", "Unknown"):
            CONDITION.labels(namespace, name, c["type"], value).set(1 if c["status"] == value else 0)


def forget_modeldeployment(namespace: str, name: str) -> None:
    """Drop a deleted ModelDeployment's series, so no alert fires for what no longer exists."""
    for gauge in PER_MD_GAUGES:
        for labels in list(gauge._metrics):  # noqa: SLF001 - prometheus_client has no public listing
            if labels[:2] == (namespace, name):
                gauge.remove(*labels)


SCALER_QUERIES: Final = Counter(
    "model_operator_scaler_prometheus_queries_total",
    "Prometheus queries the built-in autoscaler sent (one per metric kind per poll, for the whole fleet).",
)
PROMETHEUS_ERRORS: Final = Counter(
    "model_operator_prometheus_errors_total", "Failed Prometheus queries by cause.", ["cause"]
)


@contextmanager
def measured(handler: str) -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    except Exception as exc:
        RECONCILE_ERRORS.labels(handler, type(exc).__name__).inc()
        RECONCILES.labels(handler, "error").inc()
        raise
    else:
        RECONCILES.labels(handler, "ok").inc()
    finally:
        RECONCILE_SECONDS.labels(handler).observe(time.perf_counter() - start)

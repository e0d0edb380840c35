"""The operator's own Prometheus metrics."""

from __future__ import annotations

import collections
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Final, NamedTuple

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, Metric
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

RECONCILES: Final = Counter(
    "model_operator_reconcile_total", "Reconciles by handler and result.", ["handler", "result"]
)
RECONCILE_SECONDS: Final = Histogram(
    "model_operator_reconcile_duration_seconds", "Reconcile duration by handler.", ["handler"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
RECONCILE_BACKLOG: Final = Gauge(
    "model_operator_reconcile_backlog", "ModelDeployments due for a reconcile that no worker has taken yet."
)
RECONCILE_ERRORS: Final = Counter(
    "model_operator_reconcile_errors_total", "Reconcile errors by handler and error class.", ["handler", "error"]
)
JOBS_STARTED: Final = Counter("model_operator_jobs_started_total", "Optimization Jobs created.")
JOBS_FAILED: Final = Counter("model_operator_jobs_failed_total", "Optimization Jobs that failed.")
JOBS_SUCCEEDED: Final = Counter("model_operator_jobs_succeeded_total", "Optimization Jobs that succeeded.")
API_WRITES: Final = Counter("model_operator_api_writes_total", "Writes the operator sent to the API server.", ["kind", "verb"])
EVENTS_DROPPED: Final = Counter(
    "model_operator_events_dropped_total", "Events not posted because too many were waiting to be (the status still says it)."
)
SCALE_DECISIONS: Final = Counter(
    "model_operator_scale_decisions_total", "Scale changes made by the built-in autoscaler.", ["direction"]
)
_MD = ("namespace", "modeldeployment")


class ModelDeploymentSeries(NamedTuple):
    """What one ModelDeployment exports, kept as one small tuple: a labelled Gauge child per
    series (a Gauge, a lock and a value each, about 20 per object) cost more memory per object
    than the object's own body at fleet sizes."""

    phase: str | None
    desired: float
    ready: float
    max_replicas: float
    sizes: tuple[tuple[str, float], ...]  # (stage, bytes)
    latencies: tuple[tuple[str, float], ...]  # (stage, seconds)
    conditions: tuple[tuple[str, str], ...]  # (type, status)


def series_of(status: dict, max_replicas: int) -> ModelDeploymentSeries:
    """The gauges of one ModelDeployment from the status the reconcile computed."""
    artifact = status.get("artifact") or {}
    opt = status.get("optimization") or {}
    phase = status.get("phase")
    return ModelDeploymentSeries(
        phase=sys.intern(phase) if phase else None,
        desired=float(status.get("replicas") or 0),
        ready=float(status.get("readyReplicas") or 0),
        max_replicas=float(max_replicas),
        sizes=tuple((stage, float(artifact[key])) for stage, key in (("original", "originalSizeBytes"), ("optimized", "sizeBytes"))
                    if artifact.get(key) is not None),
        latencies=tuple((stage, opt[key] / 1000.0) for stage, key in (("before", "latencyMsBefore"), ("after", "latencyMsAfter"))
                        if opt.get(key) is not None),
        conditions=tuple((sys.intern(c["type"]), sys.intern(c["status"])) for c in status.get("conditions") or []),
    )


class ModelDeploymentCollector(Collector):
    """The per-ModelDeployment gauges and the count by phase, built at scrape time from one tuple
    per object: reconciles in kopf's threads only replace their object's tuple, so there is no
    shared count to race on, and nothing costs O(fleet) but the scrape. Series and labels as
    Gauges would give them: model_operator_condition is 1 for each type's current status and 0
    for the other two, as kube-state-metrics does for Pod conditions."""

    def __init__(self) -> None:
        self._series: dict[tuple[str, str], ModelDeploymentSeries] = {}

    def export(self, namespace: str, name: str, status: dict, max_replicas: int) -> None:
        self._series[(namespace, name)] = series_of(status, max_replicas)

    def forget(self, namespace: str, name: str) -> None:
        """Drop a deleted ModelDeployment's series, so no alert fires for what no longer exists."""
        self._series.pop((namespace, name), None)

    def collect(self) -> Iterator[Metric]:
        phases = GaugeMetricFamily("model_operator_modeldeployments", "ModelDeployments by phase.", labels=("namespace", "phase"))
        desired = GaugeMetricFamily("model_operator_desired_replicas", "Replicas the spec asks for.", labels=_MD)
        ready = GaugeMetricFamily("model_operator_ready_replicas", "Ready Triton replicas.", labels=_MD)
        maximum = GaugeMetricFamily("model_operator_max_replicas", "autoscaling.maxReplicas (0 without autoscaling).", labels=_MD)
        sizes = GaugeMetricFamily("model_operator_artifact_size_bytes", "Model size before and after optimization.",
                                  labels=(*_MD, "stage"))
        latency = GaugeMetricFamily("model_operator_optimization_latency_seconds",
                                    "Measured model latency before and after optimization.", labels=(*_MD, "stage"))
        condition = GaugeMetricFamily("model_operator_condition",
                                      "ModelDeployment conditions: 1 for the current status of each type.",
                                      labels=(*_MD, "type", "status"))
        # A copy taken in one C call: reconciles in kopf's threads add to the dict while a scrape runs.
        by_phase: collections.Counter[tuple[str, str]] = collections.Counter()
        for (namespace, name), s in list(self._series.items()):
            md = [namespace, name]
            if s.phase:
                by_phase[(namespace, s.phase)] += 1
            desired.add_metric(md, s.desired)
            ready.add_metric(md, s.ready)
            maximum.add_metric(md, s.max_replicas)
            for stage, value in s.sizes:
                sizes.add_metric([*md, stage], value)
            for stage, value in s.latencies:
                latency.add_metric([*md, stage], value)
            for type_, current in s.conditions:
                for status in ("True", "False", "Unknown"):
                    condition.add_metric([*md, type_, status], 1.0 if current == status else 0.0)
        for (namespace, phase), n in by_phase.items():
            phases.add_metric([namespace, phase], n)
        yield from (phases, desired, ready, maximum, sizes, latency, condition)


MODELDEPLOYMENTS: Final = ModelDeploymentCollector()
REGISTRY.register(MODELDEPLOYMENTS)


def export_modeldeployment(namespace: str, name: str, status: dict, max_replicas: int) -> None:
    """Per-ModelDeployment gauges from the status the reconcile computed."""
    MODELDEPLOYMENTS.export(namespace, name, status, max_replicas)


def forget_modeldeployment(namespace: str, name: str) -> None:
    MODELDEPLOYMENTS.forget(namespace, name)


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

"""The operator's own Prometheus metrics."""

from __future__ import annotations

import collections
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Final, NamedTuple

from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.utils import floatToGoString

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


# (name, help, labels beyond namespace/modeldeployment): the per-ModelDeployment families, in
# the order a scrape lists them.
_FAMILIES: Final = (
    ("model_operator_desired_replicas", "Replicas the spec asks for.", ()),
    ("model_operator_ready_replicas", "Ready Triton replicas.", ()),
    ("model_operator_max_replicas", "autoscaling.maxReplicas (0 without autoscaling).", ()),
    ("model_operator_artifact_size_bytes", "Model size before and after optimization.", ("stage",)),
    ("model_operator_optimization_latency_seconds", "Measured model latency before and after optimization.", ("stage",)),
    ("model_operator_condition", "ModelDeployment conditions: 1 for the current status of each type.", ("type", "status")),
)
_CHUNK = 500  # objects per piece of a scrape's text


class ModelDeploymentCollector:
    """The per-ModelDeployment gauges and the count by phase, written at scrape time from one tuple
    per object: reconciles in the worker threads only replace their object's tuple, so there is
    no shared count to race on, and nothing costs O(fleet) but the scrape. Series and labels as
    Gauges would give them: model_operator_condition is 1 for each type's current status and 0
    for the other two, as kube-state-metrics does for Pod conditions.

    The text is written a few hundred objects at a time rather than through a registered
    Collector: prometheus_client builds every sample of a scrape (a Sample and a label dict
    each), then every line, then joins them, and at 10,000 objects (290,000 series, 37 MB of
    text) one scrape took the process from 35 to 194 MiB; memory Python keeps once it has it."""

    def __init__(self) -> None:
        self._series: dict[tuple[str, str], ModelDeploymentSeries] = {}

    def export(self, namespace: str, name: str, status: dict, max_replicas: int) -> None:
        self._series[(namespace, name)] = series_of(status, max_replicas)

    def forget(self, namespace: str, name: str) -> None:
        """Drop a deleted ModelDeployment's series, so no alert fires for what no longer exists."""
        self._series.pop((namespace, name), None)

    def exposition(self) -> Iterator[bytes]:
        """The families in Prometheus' text format (0.0.4), piece by piece."""
        # A copy taken in one C call: reconciles in other threads add to the dict while a scrape runs.
        snapshot = list(self._series.items())
        by_phase: collections.Counter[tuple[str, str]] = collections.Counter(
            (namespace, s.phase) for (namespace, _), s in snapshot if s.phase)
        yield _header("model_operator_modeldeployments", "ModelDeployments by phase.")
        yield "".join(_line("model_operator_modeldeployments", (("namespace", ns), ("phase", phase)), n)
                      for (ns, phase), n in sorted(by_phase.items())).encode()
        for name, help_, _ in _FAMILIES:
            yield _header(name, help_)
            for i in range(0, len(snapshot), _CHUNK):
                yield "".join(line for key, s in snapshot[i:i + _CHUNK] for line in _lines_of(name, key, s)).encode()


def _lines_of(family: str, key: tuple[str, str], s: ModelDeploymentSeries) -> Iterator[str]:
    md = (("namespace", key[0]), ("modeldeployment", key[1]))
    if family == "model_operator_desired_replicas":
        yield _line(family, md, s.desired)
    elif family == "model_operator_ready_replicas":
        yield _line(family, md, s.ready)
    elif family == "model_operator_max_replicas":
        yield _line(family, md, s.max_replicas)
    elif family == "model_operator_artifact_size_bytes":
        for stage, value in s.sizes:
            yield _line(family, (*md, ("stage", stage)), value)
    elif family == "model_operator_optimization_latency_seconds":
        for stage, value in s.latencies:
            yield _line(family, (*md, ("stage", stage)), value)
    else:
        for type_, current in s.conditions:
            for status in ("True", "False", "Unknown"):
                yield _line(family, (*md, ("type", type_), ("status", status)), 1.0 if current == status else 0.0)


def _header(name: str, help_: str) -> bytes:
    return f"# HELP {name} {help_}\n# TYPE {name} gauge\n".encode()


def _line(name: str, labels: tuple[tuple[str, str], ...], value: float) -> str:
    return name + "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in labels) + "} " + floatToGoString(value) + "\n"


def _escape(value: str) -> str:
    """A label value as the text format quotes it."""
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


MODELDEPLOYMENTS: Final = ModelDeploymentCollector()


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

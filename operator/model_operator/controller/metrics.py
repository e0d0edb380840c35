"""The operator's own Prometheus metrics."""

from __future__ import annotations

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
GOLDEN_AGREEMENT: Final = Gauge(
    "model_operator_golden_probe_agreement", "Share of golden samples whose live answer matched the report (0..1).",
    ["namespace", "modeldeployment"],
)
CONDITION: Final = Gauge(
    "model_operator_condition", "ModelDeployment conditions: 1 for the current status of each type.",
    ["namespace", "modeldeployment", "type", "status"],
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

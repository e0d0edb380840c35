"""The built-in autoscaler's tick: query Prometheus, ask the pure policy, report.

State that must survive an operator restart (recent recommendations for the stabilization
windows, recent scale events for the rate limits) lives in status.scaling, not in memory.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from ..api.types import Autoscaling, ModelDeploymentSpec, ScalingEngine, Target
from ..plan import status as st
from ..scaling import promql
from ..scaling.policy import Recommendation, ScaleEvent, decide
from ..scaling.prometheus import Prometheus, PrometheusError
from . import metrics

HISTORY = 20


@dataclass
class ScaleOutcome:
    scaling: dict[str, Any] | None = None
    conditions: list[dict[str, Any]] | None = None
    replicas: int | None = None
    events: list[tuple[str, str, str]] = field(default_factory=list)


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


PERSIST_EVERY = 30.0


def should_poll(spec: ModelDeploymentSpec, status: dict[str, Any], scaling: dict[str, Any], now: float) -> bool:
    auto = spec.autoscaling
    if auto is None or not auto.enabled or auto.engine != ScalingEngine.operator or spec.target == Target.device:
        return False
    if not (status.get("artifact") or {}).get("sha256"):
        return False
    last = scaling.get("lastPoll") or 0
    return now - float(last) >= auto.poll_seconds * 0.9


def worth_writing(old: dict[str, Any], new: dict[str, Any], replicas_changed: bool, now: float) -> bool:
    """Status writes cost API calls per object: write on a decision, a new kind of reason, or
    every PERSIST_EVERY seconds so a restarted operator still sees its stabilization window."""
    if replicas_changed or not old:
        return True
    if (old.get("reason") or "").split(":")[0] != (new.get("reason") or "").split(":")[0]:
        return True
    return now - float(old.get("lastPoll") or 0) >= PERSIST_EVERY


def query_metrics(prom: Prometheus, name: str, namespace: str, auto: Autoscaling, window: str) -> dict[str, float | None]:
    sel = promql.pod_matcher(name, namespace, track=None)
    return {m.type.value: prom.query(promql.scaling_query(m.type, sel, window)) for m in auto.metrics}


def tick(
    body: dict[str, Any], spec: ModelDeploymentSpec, prom: Prometheus, now: float, window: str, old: dict[str, Any]
) -> ScaleOutcome:
    """One poll. `old` is the last scaling state (in memory, or status.scaling after a restart)."""
    auto = spec.autoscaling
    assert auto is not None
    meta, status = body["metadata"], dict(body.get("status") or {})
    name, namespace, generation = meta["name"], meta["namespace"], meta.get("generation")
    current = spec.serving.replicas if spec.serving else 1
    conditions = list(status.get("conditions") or [])
    out = ScaleOutcome()
    recs = [Recommendation(float(r["time"]), int(r["replicas"])) for r in old.get("recommendations") or []]
    events = [
        ScaleEvent(float(h.get("unixTime") or 0), int(h["fromReplicas"]), int(h["toReplicas"]))
        for h in old.get("history") or []
        if h.get("unixTime")
    ]

    try:
        values = query_metrics(prom, name, namespace, auto, window)
    except PrometheusError as exc:
        metrics.PROMETHEUS_ERRORS.labels(exc.cause).inc()
        before = st.get_condition(conditions, "MetricsAvailable")
        out.conditions = st.set_condition(conditions, "MetricsAvailable", "False", f"Prometheus{exc.cause.capitalize()}",
                                          f"{exc}; holding {current} replicas", generation)
        if before is None or before.get("status") != "False":
            out.events.append(("Warning", "MetricsUnavailable", f"{exc}; holding {current} replicas"))
        out.scaling = {**old, "engine": "operator", "desired": current, "reason": f"holding {current} replicas: {exc}", "lastPoll": now}
        return out

    decision, history = decide(current=current, values=values, spec=auto, now=now, recommendations=recs, events=events)
    if decision.held:
        out.conditions = st.set_condition(conditions, "MetricsAvailable", "False", "NoData", decision.reason, generation)
    else:
        out.conditions = st.set_condition(conditions, "MetricsAvailable", "True", "Queried", "scaling metrics available", generation)
    scaling = {
        **old,
        "engine": "operator",
        "desired": decision.desired,
        "metrics": {k: round(v, 6) for k, v in decision.metrics.items()},
        "reason": decision.reason,
        "recommendations": [{"time": r.time, "replicas": r.replicas} for r in history][-400:],
        "lastPoll": now,
    }
    if decision.desired != current:
        entry = {"time": _iso(now), "unixTime": now, "fromReplicas": current, "toReplicas": decision.desired, "reason": decision.reason}
        scaling["history"] = ([*(old.get("history") or []), entry])[-HISTORY:]
        scaling["lastScaleTime"] = entry["time"]
        out.replicas = decision.desired
        direction = "up" if decision.desired > current else "down"
        metrics.SCALE_DECISIONS.labels(direction).inc()
        out.events.append(("Normal", "Scaled", f"scaled {name} from {current} to {decision.desired} replicas: {decision.reason}"))
    out.scaling = scaling
    return out

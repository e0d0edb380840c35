"""The built-in autoscaler's tick: ask the pure policy with the fleet's latest sample, report.

The metric values come from scaling/fleet.FleetMetrics: one Prometheus query per metric kind per
poll for the whole fleet, shared by every ModelDeployment's tick.

State that must survive an operator restart lives in the status: the recent scale events (rate
limits) in status.scaling.history, the stabilization window in status.scalingWindow (compacted
by scaling/policy.compact: a single entry while the recommendation holds steady). status.scaling
itself is what a user reads: the metrics, the desired replicas, why, and the last decisions.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass, field
from typing import Any

from ..api.types import ModelDeploymentSpec, ScalingEngine, Target
from ..plan import status as st
from ..scaling.policy import Recommendation, ScaleEvent, decide
from ..scaling.prometheus import PrometheusError
from . import metrics

HISTORY = 20
# A changed window (a new recommendation level, one expiring) is written at most this often...
PERSIST_EVERY = 30.0
# ...and an unchanged state once per this many seconds: the shown metrics' freshness. In a
# steady fleet every status write is an API write per object; 10,000 objects at one write per
# 600 s is about 17 writes/s.
HEARTBEAT = 600.0


def heartbeat_seconds() -> float:
    """HEARTBEAT, or $MODEL_OPERATOR_SCALER_HEARTBEAT_SECONDS (read per call: tests set it after import)."""
    return float(os.environ.get("MODEL_OPERATOR_SCALER_HEARTBEAT_SECONDS") or HEARTBEAT)


@dataclass
class ScaleOutcome:
    scaling: dict[str, Any] | None = None
    window: list[dict[str, float]] | None = None
    conditions: list[dict[str, Any]] | None = None
    replicas: int | None = None
    events: list[tuple[str, str, str]] = field(default_factory=list)


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class State:
    """One ModelDeployment's scaler state: what it decided last, and what it last wrote."""
    scaling: dict[str, Any]
    window: list[dict[str, float]]
    written: dict[str, Any]
    written_window: list[dict[str, float]]

    @classmethod
    def from_status(cls, status: dict[str, Any], now: float | None = None, current: int | None = None) -> State:
        """The state a restarted operator starts from: the last one written. The newest entry of
        a steady window is written only with the heartbeat, so it may be old; as the HPA does
        when it starts, the replicas running now count as a recommendation made now: a scale-down
        right after a restart still waits for the whole stabilization window, and a scale-up
        waits for its own (none with a 0-s window: policy.decide counts an earlier
        recommendation only while it is younger than the window)."""
        scaling = dict(status.get("scaling") or {})
        # Earlier versions kept every recommendation in status.scaling.recommendations; the
        # policy compacts it on the first poll.
        written = list(status.get("scalingWindow") or scaling.pop("recommendations", None) or [])
        window = [*written, {"time": now, "replicas": current}] if now is not None and current is not None else written
        return cls(scaling, window, scaling, written)


def should_poll(spec: ModelDeploymentSpec, status: dict[str, Any], scaling: dict[str, Any], now: float) -> bool:
    auto = spec.autoscaling
    if auto is None or not auto.enabled or auto.engine != ScalingEngine.operator or spec.target == Target.device:
        return False
    if not (status.get("artifact") or {}).get("sha256"):
        return False
    last = scaling.get("lastPoll") or 0
    return now - float(last) >= auto.poll_seconds * 0.9


def _signature(window: list[dict[str, float]]) -> list[tuple[float, int]]:
    """What of a window is worth a write: every entry but the newest one's time, which moves on
    every poll while the recommendation holds steady."""
    entries = [(float(w["time"]), int(w["replicas"])) for w in window]
    return [*entries[:-1], (0.0, entries[-1][1])] if entries else []


def worth_writing(state: State, new: dict[str, Any], window: list[dict[str, float]], replicas_changed: bool, now: float,
                  heartbeat: float | None = None) -> bool:
    """Status writes cost an API call per object: write on a decision or a new kind of reason
    at once, on a changed stabilization window at most every PERSIST_EVERY seconds (so a
    restarted operator still sees it), else once per `heartbeat`."""
    old = state.written
    if replicas_changed or not old:
        return True
    if (old.get("reason") or "").split(":")[0] != (new.get("reason") or "").split(":")[0]:
        return True
    since = now - float(old.get("lastPoll") or 0)
    if _signature(state.written_window) != _signature(window) and since >= PERSIST_EVERY:
        return True
    return since >= (heartbeat if heartbeat is not None else heartbeat_seconds())


def tick(
    body: dict[str, Any], spec: ModelDeploymentSpec, values: dict[str, float | None] | PrometheusError, now: float, state: State,
    reporting: int | None = None,
) -> ScaleOutcome:
    """One poll with this MD's values from the fleet's sample (or the error that sample hit).
    `reporting`: how many of its pods Prometheus had scraped, the ones the values were taken over."""
    auto = spec.autoscaling
    assert auto is not None
    meta, status = body["metadata"], dict(body.get("status") or {})
    name, generation = meta["name"], meta.get("generation")
    current = spec.serving.replicas if spec.serving else 1
    conditions = list(status.get("conditions") or [])
    out = ScaleOutcome()
    old = state.scaling
    recs = [Recommendation(float(r["time"]), int(r["replicas"])) for r in state.window]
    events = [
        ScaleEvent(float(h.get("unixTime") or 0), int(h["fromReplicas"]), int(h["toReplicas"]))
        for h in old.get("history") or []
        if h.get("unixTime")
    ]

    if isinstance(values, PrometheusError):
        exc = values
        before = st.get_condition(conditions, "MetricsAvailable")
        out.conditions = st.set_condition(conditions, "MetricsAvailable", "False", f"Prometheus{exc.cause.capitalize()}",
                                          f"{exc}; holding {current} replicas", generation)
        if before is None or before.get("status") != "False":
            out.events.append(("Warning", "MetricsUnavailable", f"{exc}; holding {current} replicas"))
        out.scaling = {**old, "engine": "operator", "desired": current, "reason": f"holding {current} replicas: {exc}", "lastPoll": now}
        out.window = state.window
        return out

    # The replicas a scale-up multiplies from are those the per-replica values were taken over, as
    # the HPA's are the pods with metrics: Ready ones (a starting one serves nothing), and of those
    # only the scraped ones (between a pod's Ready and its first scrape, the value is the other
    # pods' load alone).
    ready = None if status.get("readyReplicas") is None else int(status["readyReplicas"])
    if reporting is not None:
        ready = reporting if ready is None else min(ready, reporting)
    decision, history = decide(current=current, values=values, spec=auto, now=now, recommendations=recs, events=events,
                               ready=ready)
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
        "lastPoll": now,
    }
    out.window = [{"time": r.time, "replicas": r.replicas} for r in history]
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

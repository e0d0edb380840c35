"""The built-in autoscaler's one loop for the fleet (controller/scaler.py): which objects a pass
polls, what it writes and when, and what a refused write leaves behind; from plain dicts, with
a Prometheus that answers from a table and a writer that records."""

from __future__ import annotations

import asyncio
import copy
import threading
from typing import Any

import pytest

from model_operator.controller import scaler
from model_operator.scaling.fleet import FleetMetrics
from model_operator.scaling.promql import fleet_reporting_pods

ARTIFACT_READY = {"type": "ArtifactReady", "status": "True", "reason": "Verified", "message": "s3://b/k",
                  "observedGeneration": 1, "lastTransitionTime": "2026-12-03T00:00:00Z"}
AUTO = {"minReplicas": 1, "maxReplicas": 10, "pollSeconds": 5, "metrics": [{"type": "inferenceRate", "target": 5}],
        "scaleUp": {"stabilizationSeconds": 0}, "scaleDown": {"stabilizationSeconds": 300}}


def md(name: str, replicas: int = 1, artifact: bool = True, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "serving.model-operator.io/v1alpha1", "kind": "ModelDeployment",
        "metadata": {"name": name, "namespace": "ns", "uid": f"uid-{name}", "generation": 1, "resourceVersion": "41",
                     "managedFields": [{"manager": "kubectl", "fieldsV1": {"f:spec": {}}}],
                     "annotations": {"serving.model-operator.io/last-handled-configuration": "{...}"}},
        "spec": {"model": {"uri": "pvc://m/d.onnx", "format": "onnx"}, "serving": {"replicas": replicas},
                 "autoscaling": AUTO, **spec},
        "status": {"phase": "Ready", "readyReplicas": replicas, "optimization": {"candidates": [{"name": "x"}] * 50},
                   "conditions": [dict(ARTIFACT_READY)],
                   **({"artifact": {"sha256": "abc", "uri": "s3://b/k", "sizeBytes": 1}} if artifact else {})},
    }


class TableProm:
    """Answers the fleet's inferenceRate query with a per-MD rate from `rates`."""

    def __init__(self, rates: dict[str, float]) -> None:
        self.rates = rates
        self.queries = 0

    async def query_by(self, promql: str, labels: tuple[str, ...]) -> dict[tuple[str, ...], float]:
        if promql == fleet_reporting_pods():
            return {}  # no pod count: the Ready replicas in the status are the base
        self.queries += 1
        return {("ns", name): rate for name, rate in self.rates.items()}


class Recorder:
    def __init__(self, fail: bool = False) -> None:
        self.writes: list[tuple[str, scaler.Writes]] = []
        self.events: list[tuple[str, str, str]] = []
        self.fail = fail
        self.gate: threading.Event | None = None

    def write(self, v: dict[str, Any], w: scaler.Writes) -> None:
        if self.gate is not None:
            self.gate.wait(5)
        if self.fail:
            raise RuntimeError("(422) the object changed")
        self.writes.append((v["metadata"]["name"], w))
        self.events += [(v["metadata"]["name"], reason, message) for _, reason, message in w.events]


def fleet_scaler(rates: dict[str, float], rec: Recorder) -> tuple[scaler.FleetScaler, TableProm]:
    prom = TableProm(rates)
    clock = [1000.0]
    fleet = FleetMetrics(prom, "30s", clock=lambda: clock[0])  # type: ignore[arg-type]
    return scaler.FleetScaler(fleet, rec.write, threads=2), prom


def views(*bodies: dict[str, Any]) -> list[dict[str, Any]]:
    return [v for v in (scaler.view(b) for b in bodies) if v is not None]


def run(s: scaler.FleetScaler, vs: list[dict[str, Any]], now: float) -> int:
    async def go() -> int:
        s.fleet.clock = lambda: now
        n = await s.once(vs, now)
        await s.drain()
        return n
    return asyncio.run(go())


def test_the_view_keeps_what_the_scaler_reads_and_nothing_else() -> None:
    b = md("a")
    v = scaler.view(b)
    assert v is not None
    assert v["metadata"] == {"name": "a", "namespace": "ns", "uid": "uid-a", "generation": 1, "resourceVersion": "41"}
    assert v["status"] == {"readyReplicas": 1, "conditions": [ARTIFACT_READY], "artifact": {"sha256": "abc"}}
    assert v["spec"] == b["spec"] and v["spec"] is not b["spec"]
    b["spec"]["serving"]["replicas"] = 9  # a copy: kopf's body may change under it
    assert v["spec"]["serving"]["replicas"] == 1


@pytest.mark.parametrize("change", [
    {"target": "device"},
    {"autoscaling": {**AUTO, "engine": "hpa"}},
    {"autoscaling": {**AUTO, "enabled": False}},
    {"autoscaling": None},
], ids=["device", "hpa-engine", "disabled", "no-autoscaling"])
def test_objects_the_builtin_scaler_does_not_drive_have_no_view(change: dict[str, Any]) -> None:
    b = md("a")
    b["spec"] |= change
    assert scaler.view(b) is None


def test_an_object_being_deleted_has_no_view() -> None:
    b = md("a")
    b["metadata"]["deletionTimestamp"] = "2026-12-03T00:00:00Z"
    assert scaler.view(b) is None


def test_a_pass_polls_the_due_objects_with_one_query_and_writes_each_decision() -> None:
    rec = Recorder()
    s, prom = fleet_scaler({"a": 5.0, "b": 12.0}, rec)
    bodies = {n: md(n, artifact=n != "c") for n in "abc"}
    vs = views(*bodies.values())
    # The first poll after a start: a (5 req/s, target 5) is steady, b (12) scales up at once
    # (a 0-s scale-up window); c serves nothing yet.
    assert run(s, vs, 1000.0) == 2
    assert prom.queries == 1
    first = dict(rec.writes)
    assert set(first) == {"a", "b"} and first["a"].replicas is None and first["b"].replicas == 3
    assert first["b"].status["scaling"]["desired"] == 3
    assert [c["status"] for c in first["b"].status["conditions"] if c["type"] == "MetricsAvailable"] == ["True"]
    assert s.conditions["uid-a"]["status"] == "True"
    assert [(n, r) for n, r, _ in rec.events] == [("b", "Scaled")]
    for name, w in rec.writes:  # what the API server now holds comes back through the watch
        bodies[name]["status"] |= copy.deepcopy(w.status)
    bodies["b"]["spec"]["serving"]["replicas"], bodies["b"]["metadata"]["generation"] = 3, 2
    prom.rates["b"] = 4.0  # the same load spread over 3 replicas
    rec.writes.clear()
    rec.events.clear()
    assert run(s, views(*bodies.values()), 1005.0) == 2 and prom.queries == 2
    # Both settled: a is not written again, b only for its new generation (MetricsAvailable's
    # observedGeneration), with no replica change and no Event.
    (name, w), = rec.writes
    assert name == "b" and w.replicas is None and w.status["scaling"]["desired"] == 3 and rec.events == []


def test_after_a_restart_a_scale_down_waits_for_its_window_and_a_scale_up_for_its_own() -> None:
    """The running replicas count as a recommendation made at the first poll (as the HPA
    controller does when it starts): with a 300-s scale-down window a restarted operator does not
    scale down at once; with a 60-s scale-up window it does not scale up at once either, and does
    when the window has passed."""
    rec = Recorder()
    s, _ = fleet_scaler({"down": 1.0, "up": 15.0}, rec)
    down = md("down", replicas=4)
    up = md("up", autoscaling={**AUTO, "scaleUp": {"stabilizationSeconds": 60}})
    assert run(s, views(down, up), 1000.0) == 2
    assert all(w.replicas is None for _, w in rec.writes)
    for name, w in rec.writes:
        (down if name == "down" else up)["status"] |= copy.deepcopy(w.status)
    rec.writes.clear()
    assert run(s, views(down, up), 1030.0) == 2
    assert all(w.replicas is None for _, w in rec.writes)
    for name, w in rec.writes:
        (down if name == "down" else up)["status"] |= copy.deepcopy(w.status)
    rec.writes.clear()
    assert run(s, views(down, up), 1061.0) == 2
    assert [(n, w.replicas) for n, w in rec.writes] == [("up", 3)]


def test_a_poll_waits_for_its_interval_and_a_steady_object_is_not_written_again() -> None:
    rec = Recorder()
    s, prom = fleet_scaler({"a": 5.0}, rec)
    a = md("a")
    assert run(s, views(a), 1000.0) == 1 and len(rec.writes) == 1
    # What the API server now holds comes back through the watch into the index.
    a["status"] |= {k: copy.deepcopy(v) for k, v in rec.writes[0][1].status.items()}
    assert run(s, views(a), 1001.0) == 0  # pollSeconds 5: not due
    assert run(s, views(a), 1005.0) == 1 and len(rec.writes) == 1  # due, same answer: no write
    assert prom.queries == 2


def test_a_refused_write_posts_no_event_and_is_decided_again() -> None:
    rec = Recorder()
    s, _ = fleet_scaler({"b": 12.0}, rec)
    b = md("b")
    rec.fail = True
    assert run(s, views(b), 1000.0) == 1
    assert rec.events == [] and "history" not in s.states["uid-b"].scaling  # the refused scale left no trace
    rec.fail = False
    assert run(s, views(b), 1010.0) == 1
    (name, w), = rec.writes
    assert name == "b" and w.replicas == 3 and len(w.status["scaling"]["history"]) == 1
    assert [r for _, r, _ in rec.events] == ["Scaled"]


def test_an_object_with_a_write_on_its_way_is_not_polled() -> None:
    rec = Recorder()
    rec.gate = threading.Event()
    s, _ = fleet_scaler({"b": 12.0}, rec)
    vs = views(md("b"))

    async def go() -> tuple[int, int]:
        first = await s.once(vs, 1000.0)
        s.fleet.clock = lambda: 1010.0
        second = await s.once(vs, 1010.0)  # due again, but the first write is still out
        rec.gate.set()  # type: ignore[union-attr]
        await s.drain()
        return first, second

    assert asyncio.run(go()) == (1, 0)
    assert len(rec.writes) == 1


def test_an_invalid_spec_is_left_to_the_reconcile() -> None:
    rec = Recorder()
    s, _ = fleet_scaler({"a": 12.0}, rec)
    bad = md("a")
    bad["spec"]["autoscaling"] = {**AUTO, "maxReplicas": 0}
    assert run(s, views(bad), 1000.0) == 0 and rec.writes == []
    assert s.specs["uid-a"] == (1, None)


def test_new_conditions_are_written_only_onto_the_version_they_were_made_from() -> None:
    rec = Recorder()
    s, _ = fleet_scaler({"a": 5.0}, rec)
    assert run(s, views(md("a")), 1000.0) == 1
    (_, w), = rec.writes
    assert w.read_version == "41"
    assert [c["type"] for c in w.status["conditions"]] == ["ArtifactReady", "MetricsAvailable"]
    assert set(w.own()) == {"scaling", "scalingWindow"}


def test_an_object_the_reconcile_has_not_written_yet_gets_no_conditions_from_the_scaler() -> None:
    """No list to test against: the scaler's condition waits in memory, and the reconcile's first
    write brings it along."""
    rec = Recorder()
    s, _ = fleet_scaler({"a": 5.0}, rec)
    a = md("a")
    del a["status"]["conditions"]
    assert run(s, views(a), 1000.0) == 1
    (_, w), = rec.writes
    assert "conditions" not in w.status and w.read_version is None
    assert set(w.status) == {"scaling", "scalingWindow"}
    assert s.conditions["uid-a"]["type"] == "MetricsAvailable"


def test_reconciles_carry_the_scalers_condition_only_once_its_own_fields_are_written() -> None:
    """A reconcile that wrote MetricsAvailable before the scaler's `scaling` landed would show a
    condition telling of a poll the status does not hold; a refused write leaves no word at all."""
    rec = Recorder()
    rec.gate = threading.Event()
    s, _ = fleet_scaler({"a": 5.0}, rec)
    a = md("a")
    del a["status"]["conditions"]  # the reconcile has not written yet: it is to bring the condition

    async def go() -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        await s.once(views(a), 1000.0)
        while_out = s.conditions.get("uid-a")
        rec.gate.set()  # type: ignore[union-attr]
        await s.drain()
        return while_out, s.conditions.get("uid-a")

    while_out, after = asyncio.run(go())
    assert while_out is None
    assert after is not None and after["type"] == "MetricsAvailable" and after["status"] == "True"
    (_, w), = rec.writes
    assert "lastPoll" in w.status["scaling"]

    refused = Recorder(fail=True)
    s, _ = fleet_scaler({"a": 5.0}, refused)
    assert run(s, views(md("a")), 1000.0) == 1
    assert "uid-a" not in s.conditions


def test_a_stale_read_is_decided_again_without_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    from model_operator.kube.api import StaleRead

    rec = Recorder()
    s, _ = fleet_scaler({"a": 5.0}, rec)

    def stale(v: dict[str, Any], w: scaler.Writes) -> None:
        raise StaleRead("changed")

    s.write = stale
    assert run(s, views(md("a")), 1000.0) == 1
    assert s.states["uid-a"].scaling == {} and not [r for r in caplog.records if r.levelname == "WARNING"]
    s.write = rec.write
    assert run(s, views(md("a")), 1001.0) == 1  # nothing was written, so the poll is due at once
    assert len(rec.writes) == 1


def test_an_object_with_no_series_is_written_once_then_left_until_a_series_appears(monkeypatch: pytest.MonkeyPatch) -> None:
    """KWOK pods, a Triton not scraped yet: the first poll says NoData; the next ones, finding no
    series again, cost a lookup in the sample and tick nothing, not even a heartbeat (no metric,
    no freshness to show), in this process or a restarted one; a series or a new generation
    ends it."""
    monkeypatch.setenv("MODEL_OPERATOR_SCALER_HEARTBEAT_SECONDS", "600")
    rec = Recorder()
    s, _ = fleet_scaler({}, rec)
    a = md("a")
    assert run(s, views(a), 1000.0) == 1
    (_, w), = rec.writes
    assert [(c["status"], c["reason"]) for c in w.status["conditions"] if c["type"] == "MetricsAvailable"] == [("False", "NoData")]
    rec.writes.clear()
    ticks = {"n": 0}
    real_tick = scaler.autoscale.tick

    def counting(*args: Any, **kwargs: Any) -> Any:
        ticks["n"] += 1
        return real_tick(*args, **kwargs)

    monkeypatch.setattr(scaler.autoscale, "tick", counting)
    # Before the watch brings the write back, and after.
    assert run(s, views(a), 1005.0) == 1
    a["status"] |= copy.deepcopy(w.status)
    for now in (1010.0, 1300.0, 1700.0, 5000.0):
        assert run(s, views(a), now) == 1
    assert ticks["n"] == 0 and rec.writes == []
    # A restarted operator reads NoData from the status and leaves it.
    restarted, _ = fleet_scaler({}, rec)
    assert run(restarted, views(a), 6000.0) == 1 and ticks["n"] == 0 and rec.writes == []
    # A series appears: ticked, and scaled.
    s.fleet.prom.rates["a"] = 12.0  # type: ignore[attr-defined]
    assert run(s, views(a), 6005.0) == 1
    (_, w), = rec.writes
    assert ticks["n"] == 1 and w.replicas == 3
    assert [c["status"] for c in w.status["conditions"] if c["type"] == "MetricsAvailable"] == ["True"]


def test_a_refused_no_data_write_is_tried_again() -> None:
    rec = Recorder(fail=True)
    s, _ = fleet_scaler({}, rec)
    a = md("a")
    assert run(s, views(a), 1000.0) == 1 and rec.writes == []
    rec.fail = False
    assert run(s, views(a), 1001.0) == 1
    (_, w), = rec.writes
    assert [c["reason"] for c in w.status["conditions"] if c["type"] == "MetricsAvailable"] == ["NoData"]


def test_a_new_generation_without_series_is_ticked_once_for_its_condition() -> None:
    rec = Recorder()
    s, _ = fleet_scaler({}, rec)
    a = md("a")
    run(s, views(a), 1000.0)
    a["status"] |= copy.deepcopy(rec.writes[0][1].status)
    rec.writes.clear()
    a["metadata"]["generation"] = 2
    assert run(s, views(a), 1005.0) == 1
    (_, w), = rec.writes
    assert [c["observedGeneration"] for c in w.status["conditions"] if c["type"] == "MetricsAvailable"] == [2]


def test_an_object_that_serves_nothing_yet_gets_no_scaling_status() -> None:
    rec = Recorder()
    s, _ = fleet_scaler({}, rec)
    a = md("a")
    a["status"]["readyReplicas"] = 0
    assert run(s, views(a), 1000.0) == 1 and run(s, views(a), 1005.0) == 1
    assert rec.writes == [] and "uid-a" not in s.states
    a["status"]["readyReplicas"] = 1  # serving, and still no series: now NoData is news
    assert run(s, views(a), 1010.0) == 1
    (_, w), = rec.writes
    assert w.status["scaling"]["reason"].startswith("holding")


def test_an_unreachable_prometheus_is_reported_even_before_serving() -> None:
    from model_operator.scaling.prometheus import PrometheusError

    class Down:
        async def query_by(self, promql: str, labels: tuple[str, ...]) -> dict[tuple[str, ...], float]:
            raise PrometheusError("unreachable", "connection refused")

    rec = Recorder()
    s = scaler.FleetScaler(FleetMetrics(Down(), "30s", clock=lambda: 1000.0), rec.write, threads=1)  # type: ignore[arg-type]
    a = md("a")
    a["status"]["readyReplicas"] = 0
    assert run(s, views(a), 1000.0) == 1
    (_, w), = rec.writes
    assert [c["reason"] for c in w.status["conditions"] if c["type"] == "MetricsAvailable"] == ["PrometheusUnreachable"]

"""The fleet's reconcile loop, with the reconciler and the API server replaced by recorders: what
it keeps of a body, when it reconciles, what it writes (the e2e tests run it against the real
API server)."""

from __future__ import annotations

import threading
from typing import Any

from kubetest.wait import wait_for
from model_operator.controller.children import ChildCache
from model_operator.controller.loop import ReconcileLoop, changed_keys, compact, expand, resync_delay
from model_operator.controller.reconcile import Outcome


def md(name: str, version: int, phase: str | None = None, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "serving.model-operator.io/v1alpha1", "kind": "ModelDeployment",
        "metadata": {"name": name, "namespace": "ns", "uid": f"uid-{name}", "resourceVersion": str(version), "generation": 1,
                     "managedFields": [{"manager": "kubectl", "fieldsV1": {"f:spec": {}}}],
                     "annotations": {"serving.model-operator.io/last-handled-configuration": '{"spec": {}}', "team": "a"}},
        "spec": spec, "status": {"phase": phase} if phase else {},
    }


class FakeReconciler:
    """Wants every object Ready; counts its calls."""

    fleet_health = None

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.lock = threading.Lock()

    def reconcile(self, body: dict[str, Any], observed: Any) -> Outcome:
        with self.lock:
            self.calls.append((body["metadata"]["name"], body["metadata"]["resourceVersion"]))
        return Outcome(status={**(body.get("status") or {}), "phase": "Ready"}, events=[("Normal", "Ready", "serving")])


class FakeKube:
    def __init__(self) -> None:
        self.writes: list[tuple[str, dict[str, Any]]] = []
        self.events: list[str] = []
        self.version = 100

    def patch_status(self, api_version: str, kind: str, name: str, namespace: str, status: dict[str, Any]) -> dict[str, Any]:
        self.writes.append((name, status))
        self.version += 1
        return md(name, self.version, **{}) | {"status": {"phase": status.get("phase")}}

    def post_event(self, body: dict[str, Any], type_: str, reason: str, message: str) -> None:
        self.events.append(reason)


def test_compact_keeps_the_body_without_managed_fields_or_kopfs_copy_of_the_spec() -> None:
    body = md("a", 1, model={"uri": "pvc://x"})
    kept = expand(compact(body))
    assert "managedFields" not in kept["metadata"] and kept["metadata"]["annotations"] == {"team": "a"}
    assert kept["spec"] == body["spec"] and kept["metadata"]["resourceVersion"] == "1"
    assert len(compact(body)) < len(str(body))


ROLLING = {"type": "Progressing", "status": "True", "reason": "Rolling"}
AUTOTUNING = {"type": "Progressing", "status": "True", "reason": "Autotuning"}


def test_resync_is_fast_while_work_is_under_way_and_slow_once_settled() -> None:
    assert resync_delay({"phase": "Ready"}, False, 5, 60) == 60
    assert resync_delay({"phase": "Failed"}, False, 5, 60) == 60
    assert resync_delay({"phase": "Optimizing"}, False, 5, 60) == 5
    assert resync_delay({"phase": "Deploying"}, False, 5, 60) == 5
    assert resync_delay({"phase": "Degraded"}, False, 5, 60) == 5
    assert resync_delay({"phase": "Deploying", "conditions": [AUTOTUNING]}, False, 5, 60) == 5
    # A plain rollout waits on its Deployment and Pods, whose changes the informers announce...
    assert resync_delay({"phase": "Deploying", "conditions": [ROLLING]}, False, 5, 60) == 60
    # ...unless a Job runs beside it (its progress is read over HTTP) or an apply was refused.
    assert resync_delay({"phase": "Deploying", "conditions": [ROLLING]}, False, 5, 60, jobs_running=True) == 5
    assert resync_delay({"phase": "Deploying", "conditions": [ROLLING]}, True, 5, 60) == 5
    assert resync_delay({"phase": "Ready", "rollout": {"canary": {"started": 1.0}}}, False, 5, 60) == 5
    assert resync_delay({"phase": "Ready", "rollout": {"watch": {"started": 1.0}}}, False, 5, 60) == 5
    assert resync_delay({"phase": "Ready"}, True, 5, 60) == 5  # a refused apply is retried


def test_changed_keys_are_the_ones_that_came_went_or_moved() -> None:
    before = {("ns", "a"): (1.0,), ("ns", "b"): (2.0,), ("ns", "c"): (3.0,)}
    after = {("ns", "a"): (1.0,), ("ns", "b"): (2.5,), ("ns", "d"): (4.0,)}
    assert changed_keys(before, after) == {("ns", "b"), ("ns", "c"), ("ns", "d")}


def test_an_event_reconciles_once_writes_once_and_the_echo_of_its_own_write_changes_nothing() -> None:
    reconciler, kube = FakeReconciler(), FakeKube()
    loop = ReconcileLoop(reconciler, kube, ChildCache(), workers=2, fast=0.05, steady=3600)  # type: ignore[arg-type]
    loop.start()
    try:
        loop.observe("ADDED", md("a", 10))
        wait_for(lambda: kube.writes and kube.events, timeout=10, message="the status write and its Event")
        assert kube.writes == [("a", {"phase": "Ready"})] and kube.events == ["Ready"]
        # The loop keeps the write's answer (version 101), so an older event arriving late is ignored...
        loop.observe("MODIFIED", md("a", 10))
        assert loop.body(("ns", "a"))["metadata"]["resourceVersion"] == "101"  # type: ignore[index]
        # ...and the watch's echo of the write reconciles to nothing new.
        loop.observe("MODIFIED", md("a", 101, phase="Ready"))
        wait_for(lambda: loop.reconciles >= 2, timeout=10, message="the echo reconciled")
        assert len(kube.writes) == 1
        # Settled: the next reconcile is the steady resync's, an hour away.
        due = loop.queue.due_in(("ns", "a"))
        assert due is not None and due > 3000
    finally:
        loop.stop()


def test_a_deleted_object_is_forgotten_and_not_reconciled() -> None:
    reconciler, kube = FakeReconciler(), FakeKube()
    loop = ReconcileLoop(reconciler, kube, ChildCache(), workers=1)  # type: ignore[arg-type]
    loop.observe("ADDED", md("a", 10))
    with loop.locked(("ns", "a")):
        pass
    loop.observe("DELETED", md("a", 11))
    assert len(loop) == 0 and len(loop.queue) == 0
    assert loop._locks == {}  # a fleet that churns names does not keep a lock per name it ever saw


def test_reconciles_wait_for_every_child_list() -> None:
    reconciler, kube = FakeReconciler(), FakeKube()
    cache = ChildCache()
    cache.expect("pods/*")
    loop = ReconcileLoop(reconciler, kube, cache, workers=1)  # type: ignore[arg-type]
    loop.start()
    try:
        loop.observe("ADDED", md("a", 10))
        assert not cache.wait_synced(0.3)  # the pods' list has not come: the worker waits for it...
        assert reconciler.calls == [] and loop.queue.ready() == 1
        cache.mark_synced("pods/*")
        wait_for(lambda: reconciler.calls, timeout=10, message="the first reconcile after the list")
    finally:
        loop.stop()


class RollingReconciler(FakeReconciler):
    """Wants every object Deploying with its rollout under way."""

    def reconcile(self, body: dict[str, Any], observed: Any) -> Outcome:
        super().reconcile(body, observed)
        return Outcome(status={**(body.get("status") or {}), "phase": "Deploying", "conditions": [ROLLING]}, events=[])


def job(name: str, active: int) -> dict[str, Any]:
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {
        "name": name, "namespace": "ns", "labels": {"serving.model-operator.io/deployment": "a"}},
        "status": {"active": active} if active else {"succeeded": 1}}


def test_a_rolling_object_waits_for_its_childrens_events_not_the_fast_resync() -> None:
    reconciler, kube, cache = RollingReconciler(), FakeKube(), ChildCache()
    loop = ReconcileLoop(reconciler, kube, cache, workers=1, fast=0.05, steady=3600)  # type: ignore[arg-type]
    cache.on_change = loop.child_changed
    loop.start()
    try:
        loop.observe("ADDED", md("a", 10))
        wait_for(lambda: loop.reconciles >= 1, timeout=10, message="the first reconcile")
        due = loop.queue.due_in(("ns", "a"))
        assert due is not None and due > 3000 and len(reconciler.calls) == 1  # no 50-ms polling
        # A child's change (its Deployment turning ready) brings it back at once.
        cache.upsert("jobs", job("a-opt", active=1))
        wait_for(lambda: loop.reconciles >= 2, timeout=10, message="the reconcile the child's change asked for")
        # With a Job running, its progress is polled at the fast interval...
        wait_for(lambda: loop.reconciles >= 4, timeout=10, message="fast resyncs while the Job runs")
        # ...and once it is done the object waits on events again.
        cache.upsert("jobs", job("a-opt", active=0))
        wait_for(lambda: (loop.queue.due_in(("ns", "a")) or 0) > 3000, timeout=10, message="back to the steady resync")
    finally:
        loop.stop()

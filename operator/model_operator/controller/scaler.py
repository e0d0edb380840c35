"""The built-in autoscaler for the whole fleet: one task, not a kopf timer per object.

A one-second kopf timer per served ModelDeployment woke every object every second, for polls
due every 5 s, and kopf kept each object's whole body for it. This loop wakes once per tick
and walks what the scaler reads of each object (`view`, kept from the watch's events). It polls
the objects whose poll is due with the fleet's one shared Prometheus sample (scaling/fleet.py)
and hands what changed to `write_through` on its own small thread pool, never to kopf's handler
threads, which the reconciles use."""

from __future__ import annotations

import asyncio
import copy
import logging
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from ..api import types as t
from ..api.validation import SpecError, load_spec
from ..kube.api import Kube, StaleRead
from ..plan import status as st
from ..scaling.fleet import FleetMetrics
from . import autoscale, metrics

log = logging.getLogger(__name__)

# Objects polled between two chances for kopf's watches and handlers to run (a poll is ~0.3 ms).
YIELD_EVERY = 100
# The status fields the scaler reads; the rest of the status stays out of its view.
_STATUS_READ = ("readyReplicas", "scaling", "scalingWindow", "conditions")


def autoscaled(spec: Mapping[str, Any]) -> bool:
    """Whether the built-in scaler drives this spec (not another engine, not a device target)."""
    auto = spec.get("autoscaling") or {}
    return bool(auto) and auto.get("enabled", True) is not False and auto.get("engine", "operator") == "operator" \
        and spec.get("target", "cloud") != "device"


def view(body: Mapping[str, Any]) -> dict[str, Any] | None:
    """What the scaler reads of a ModelDeployment, or None when the scaler has nothing to do
    with it (not autoscaled by the operator, being deleted)."""
    meta = body.get("metadata") or {}
    spec = body.get("spec") or {}
    if meta.get("deletionTimestamp") or not autoscaled(spec):
        return None
    status = body.get("status") or {}
    kept = {k: copy.deepcopy(status[k]) for k in _STATUS_READ if k in status}
    sha = (status.get("artifact") or {}).get("sha256")
    if sha:
        kept["artifact"] = {"sha256": sha}
    return {
        "apiVersion": body.get("apiVersion") or f"{t.GROUP}/{t.VERSION}",
        "kind": body.get("kind") or "ModelDeployment",
        "metadata": {k: meta.get(k) for k in ("name", "namespace", "uid", "generation", "resourceVersion")},
        "spec": copy.deepcopy(dict(spec)),
        "status": kept,
    }


@dataclass
class Writes:
    """What one poll changes on one object: the desired replicas, status fields, Events.
    With new conditions, `read_version` is the resourceVersion they were made from: the
    conditions are one list the reconcile writes too, whole, and a list made from a stale read
    would wipe the reconcile's (seen at 10,000 objects: Ready objects left with MetricsAvailable
    alone, and every reconcile posting its Events again). So such a write is conditioned on
    that version, or on a newer one whose conditions are still `read_conditions`; when they
    changed, the scaler's own fields are written alone and the conditions wait for the next poll."""
    replicas: int | None = None
    status: dict[str, Any] = field(default_factory=dict)
    events: list[tuple[str, str, str]] = field(default_factory=list)
    read_version: str | None = None
    read_conditions: list[dict[str, Any]] | None = None
    # The scaler's MetricsAvailable, which reconciles carry once these writes have landed: before
    # that, a reconcile would show the condition without the `scaling` it tells of.
    condition: dict[str, Any] | None = None

    def own(self) -> dict[str, Any]:
        """The status fields only the scaler writes."""
        return {k: v for k, v in self.status.items() if k != "conditions"}


# (the object's view, what to write) -> None: the writes, then the Events; raises when the API
# server refused a write (then no Event is posted).
Writer = Callable[[dict[str, Any], Writes], None]


def write_through(kube: Kube, v: dict[str, Any], writes: Writes) -> None:
    """The desired replicas first: a status that tells of a scale the spec never got would be
    read as done. Then the status: new conditions only over the list they were made from
    (Writes says why); if that list changed, the scaler's own fields alone. Then the
    Events, through kube/: kopf.event posts only from within kopf's per-object handling."""
    meta = v["metadata"]
    where = (v["apiVersion"], v["kind"], meta["name"], meta["namespace"])
    version = writes.read_version
    if writes.replicas is not None:
        # The uid makes it a precondition: a same-named object made since is refused (422), not scaled.
        after = kube.patch_merge(*where, {"metadata": {"uid": meta["uid"]}, "spec": {"serving": {"replicas": writes.replicas}}})
        if (after.get("status") or {}).get("conditions") == writes.read_conditions:
            version = after["metadata"]["resourceVersion"]  # our own write moved it on, nothing else
    if "conditions" in writes.status:
        _write_conditions(kube, where, writes, version)
    elif writes.status:
        kube.patch_status(*where, writes.status)
    for type_, reason, message in writes.events:
        (log.warning if type_ == "Warning" else log.info)("%s/%s: %s: %s", meta["namespace"], meta["name"], reason, message)
        kube.post_event(v, type_, reason, message)


def _write_conditions(kube: Kube, where: tuple[str, str, str, str], writes: Writes, version: str | None) -> None:
    """The whole status write on `version`; when the object moved on, once more on its newest
    version if its conditions are still the ones read (kopf's annotations, the reconcile's other
    fields and our own spec write all move the version), else the scaler's own fields alone."""
    try:
        kube.patch_status(*where, writes.status, resource_version=version)
        return
    except StaleRead:
        now = kube.get(where[0], where[1], where[2], where[3])
    if now is not None and (now.get("status") or {}).get("conditions") == writes.read_conditions:
        try:
            kube.patch_status(*where, writes.status, resource_version=now["metadata"]["resourceVersion"])
            return
        except StaleRead:
            pass
    if not writes.own():
        raise StaleRead(f"{where[1]} {where[3]}/{where[2]}: its conditions changed since the scaler read them")
    kube.patch_status(*where, writes.own())


def _says_no_data(v: Mapping[str, Any]) -> bool:
    """The object's status already says MetricsAvailable=False/NoData for its generation."""
    status = v.get("status") or {}
    condition = st.get_condition(list(status.get("conditions") or []), "MetricsAvailable") or {}
    return condition.get("reason") == "NoData" and condition.get("status") == "False" \
        and condition.get("observedGeneration") == v["metadata"].get("generation") and bool(status.get("scaling"))


class FleetScaler:
    def __init__(self, fleet: FleetMetrics, write: Writer, threads: int = 4) -> None:
        self.fleet = fleet
        self.write = write
        self.states: dict[str, autoscale.State] = {}
        self.specs: dict[str, tuple[Any, t.ModelDeploymentSpec | None]] = {}
        # The scaler owns MetricsAvailable: its latest word per uid, which a reconcile that read
        # the object before the scaler's last write takes instead of its snapshot's.
        self.conditions: dict[str, dict[str, Any]] = {}
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="scaler-write")
        self.in_flight: dict[str, asyncio.Future[None]] = {}
        self.views: dict[tuple[str, str], dict[str, Any]] = {}
        # When each polled object is next due: a float compare per object per tick, instead of
        # its spec, state and status (10,000 objects at a 1-s tick).
        self.next_due: dict[str, float] = {}
        # The objects (uid: generation) whose last tick found no series at all (KWOK pods, a
        # Triton not scraped yet): polled again for the price of a lookup in the sample, ticked
        # again only when a series appears or the spec changes.
        self.quiet: dict[str, Any] = {}

    def track(self, key: tuple[str, str], v: dict[str, Any] | None) -> None:
        """The object's latest view, or None when it is gone or the scaler no longer drives it."""
        if v is None:
            self.views.pop(key, None)
        else:
            self.views[key] = v

    def pause(self) -> None:
        """Another operator took over: drop the views (they go stale from now on); kopf's list
        brings them back, fresh, when this process leads again."""
        self.views.clear()

    def forget(self, uid: str) -> None:
        self.states.pop(uid, None)
        self.specs.pop(uid, None)
        self.conditions.pop(uid, None)
        self.next_due.pop(uid, None)
        self.quiet.pop(uid, None)

    def spec(self, v: Mapping[str, Any]) -> t.ModelDeploymentSpec | None:
        """The parsed spec, once per generation."""
        meta = v["metadata"]
        cached = self.specs.get(meta["uid"])
        if cached is not None and cached[0] == meta.get("generation"):
            return cached[1]
        try:
            spec: t.ModelDeploymentSpec | None = load_spec(dict(v.get("spec") or {}))
        except SpecError:
            spec = None  # the reconcile reports it (InvalidSpec); nothing to scale
        self.specs[meta["uid"]] = (meta.get("generation"), spec)
        return spec

    def due(self, views: Iterable[Mapping[str, Any]], now: float) -> list[tuple[Mapping[str, Any], t.ModelDeploymentSpec, autoscale.State]]:
        """The objects whose poll is due."""
        out = []
        for v in views:
            uid = v["metadata"]["uid"]
            if uid in self.in_flight or self.next_due.get(uid, 0.0) > now:
                continue  # not due, or its last write is still on its way (the next tick polls it)
            spec = self.spec(v)
            if spec is None or spec.autoscaling is None:
                continue
            status = v.get("status") or {}
            state = self.states.get(uid) or autoscale.State.from_status(
                status, now, spec.serving.replicas if spec.serving else 1)
            if autoscale.should_poll(spec, status, state.scaling, now):
                out.append((v, spec, state))
        return out

    async def once(self, views: Iterable[Mapping[str, Any]], now: float) -> int:
        """One pass over the fleet; the number of objects polled. Writes go on in the background."""
        due = self.due(views, now)
        for i, (v, spec, state) in enumerate(due):
            if i and i % YIELD_EVERY == 0:
                await asyncio.sleep(0)  # a pass over thousands of objects must not hold kopf's event loop
            auto = spec.autoscaling
            assert auto is not None
            kinds = [m.type for m in auto.metrics]
            sample = await self.fleet.sample(kinds, max_age=auto.poll_seconds * 0.9)
            meta = v["metadata"]
            values = sample.error or sample.of(meta["namespace"], meta["name"], kinds)
            self.next_due[meta["uid"]] = now + auto.poll_seconds * 0.9
            if self._nothing_to_say(v, state, values):
                continue
            with metrics.measured("autoscale"):
                outcome = autoscale.tick(dict(v), spec, values, now, state,
                                         reporting=sample.reporting(meta["namespace"], meta["name"]))
            writes = self._decide(v, state, outcome, now)
            if writes is not None:
                self._start_write(dict(v), state, writes)
        return len(due)

    def _nothing_to_say(self, v: Mapping[str, Any], state: autoscale.State, values: Any) -> bool:
        """True when a tick would change nothing: no series for the object, and either it has never
        been polled and serves nothing yet (no status.scaling before serving: no metric can
        exist), or its status already says NoData for this generation (or this process's last
        tick of it did). The policy holds on missing data, so no decision is lost; and no
        heartbeat either: with no metric there is nothing whose freshness to show, and a
        restarted operator leaves such objects as they are."""
        meta = v["metadata"]
        uid, generation = meta["uid"], meta.get("generation")
        if not isinstance(values, dict) or any(x is not None for x in values.values()):
            self.quiet.pop(uid, None)
            return False
        if not state.written and not (v.get("status") or {}).get("readyReplicas"):
            return True
        if self.quiet.get(uid, -1) == generation or _says_no_data(v):
            return True
        self.quiet[uid] = generation
        return False

    def _decide(self, v: Mapping[str, Any], state: autoscale.State, outcome: autoscale.ScaleOutcome, now: float) -> Writes | None:
        if outcome.scaling is None or outcome.window is None:
            return None
        uid = v["metadata"]["uid"]
        state.scaling, state.window = outcome.scaling, outcome.window
        self.states[uid] = state
        writes = Writes(replicas=outcome.replicas, events=list(outcome.events))
        if autoscale.worth_writing(state, outcome.scaling, outcome.window, outcome.replicas is not None, now):
            writes.status["scaling"] = outcome.scaling
            writes.status["scalingWindow"] = outcome.window
        read = (v.get("status") or {}).get("conditions")
        if outcome.conditions is not None:
            writes.condition = st.get_condition(outcome.conditions, "MetricsAvailable")
            # With no list yet, the reconcile's first write after ours brings the condition along.
            if read is not None and outcome.conditions != read:
                writes.status["conditions"] = outcome.conditions
                writes.read_version = v["metadata"].get("resourceVersion")
                writes.read_conditions = read
        if writes.replicas is None and not writes.status and not writes.events:
            if writes.condition is not None:
                self.conditions[uid] = writes.condition  # nothing to write: the status already agrees
            return None
        return writes

    def _start_write(self, v: dict[str, Any], state: autoscale.State, writes: Writes) -> None:
        uid = v["metadata"]["uid"]
        future = asyncio.get_running_loop().run_in_executor(self.pool, self.write, v, writes)
        self.in_flight[uid] = future

        def done(f: asyncio.Future[None]) -> None:
            self.in_flight.pop(uid, None)
            meta = v["metadata"]
            if f.cancelled():
                return
            exc = f.exception()
            if exc is not None:
                # Back to what the API server holds, so a scale that was refused leaves no trace
                # in the history its rate limits count; the next poll decides again. A stale
                # read is routine under load, not worth a warning.
                state.scaling, state.window = state.written, state.written_window
                self.next_due.pop(uid, None)  # nothing was written: due again at once
                self.quiet.pop(uid, None)  # nor the NoData it was to say
                (log.debug if isinstance(exc, StaleRead) else log.warning)(
                    "scaler: could not update %s/%s: %s", meta["namespace"], meta["name"], exc)
                return
            if "scaling" in writes.status:
                state.written, state.written_window = writes.status["scaling"], writes.status["scalingWindow"]
            if writes.condition is not None and uid in self.states:  # not forgotten meanwhile
                self.conditions[uid] = writes.condition

        future.add_done_callback(done)

    async def drain(self) -> None:
        """Wait for the writes on their way (tests; the operator's cleanup)."""
        while self.in_flight:
            await asyncio.gather(*list(self.in_flight.values()), return_exceptions=True)

    async def run(self, interval: float, clock: Callable[[], float], active: Callable[[], bool] = lambda: True) -> None:
        """Pass after pass over the tracked views, `interval` seconds apart, until cancelled, while
        this process is the active operator; a failed pass is logged and the next one runs."""
        while True:
            await asyncio.sleep(interval)
            if not active():
                continue
            try:
                await self.once(list(self.views.values()), clock())
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("scaler: a pass over the fleet failed; the next tick tries again")

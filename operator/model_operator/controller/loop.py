"""The reconcile loop: one for the fleet, driven by changes, in place of a kopf timer per object.

A kopf timer per ModelDeployment reconciled every object every 5 s whether anything had changed
or not, and kopf kept each object's whole body (managedFields and all) for it: at 1,000 objects
that timer was most of the operator's steady CPU, and at 10,000 its memory went past the chart's
limit. Here:
- the ModelDeployments' watch events (kopf's, handlers.py) keep a compact copy of each body and
  mark the object for a reconcile; so does any change in a child's summary (children.py) and any
  change in its Prometheus readings (the fleet's shared health and quality samples, polled here);
- after each reconcile the object is due again soon (`fast`: reconcileIntervalSeconds) while
  something is under way that no event announces (a worker Job's progress, a canary's analysis
  window, a back-off) and after `steady` seconds (a resync) when it is settled or waits only for
  its Triton pods;
- the work queue (queue.py) holds each object once and gives it to one worker at a time.
Reconciles wait until every child kind's first list is in (a restarted operator must not take
children it has not seen yet for missing)."""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from ..api import types as t
from ..kube.api import Kube
from ..plan import status as st
from . import metrics
from .children import ChildCache, Key
from .events import EventPoster
from .queue import WorkQueue
from .reconcile import QUALITY_MAX_AGE, Outcome, Reconciler

log = logging.getLogger(__name__)

# kopf's record of the last spec it handled: a copy of the whole spec on every object, which
# nothing here reads.
_KOPF_DIFFBASE = f"{t.GROUP}/last-handled-configuration"
# Phases in which nothing is left to do until something changes.
_SETTLED = ("Ready", "Failed")
# A reconcile that raised is tried again after this long, doubling to the cap.
ERROR_FIRST, ERROR_MAX = 5.0, 300.0


def compact(body: Mapping[str, Any]) -> bytes:
    """What the loop keeps of a ModelDeployment: the body without managedFields and kopf's copy
    of the spec, as compressed JSON (a few KB per object instead of ~30 KB of dicts)."""
    meta = dict(body.get("metadata") or {})
    meta.pop("managedFields", None)
    annotations = {k: v for k, v in (meta.get("annotations") or {}).items() if k != _KOPF_DIFFBASE}
    if annotations:
        meta["annotations"] = annotations
    else:
        meta.pop("annotations", None)
    return zlib.compress(json.dumps({**body, "metadata": meta}, separators=(",", ":")).encode(), 1)


def expand(data: bytes) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(zlib.decompress(data))
    return body


def version_of(body: Mapping[str, Any]) -> int | None:
    """The resourceVersion as a number, to tell an older copy from a newer one (etcd's are numbers;
    anything else is taken as newer)."""
    try:
        return int((body.get("metadata") or {}).get("resourceVersion") or "")
    except ValueError:
        return None


def resync_delay(status: Mapping[str, Any], failed_children: bool, fast: float, steady: float,
                 jobs_running: bool = False) -> float:
    """When to reconcile again if no event comes first: soon while work is under way that no
    watch event announces (a Job's progress is read over HTTP, analysis windows close with time,
    refused applies are retried), at the steady resync once the object is settled or only waits
    for its Triton pods: every step of a plain rollout is a Deployment or Pod change, which the
    informers announce. (Polling those every 5 s kept 7,000 rolling objects of a 10,000-object
    cold start in the queue, 240 reconciles a second that found nothing new, ahead of the
    objects whose Deployments had turned ready.)"""
    if failed_children or jobs_running:
        return fast
    rollout = status.get("rollout") or {}
    if rollout.get("canary") or rollout.get("watch"):
        return fast
    progressing = st.get_condition(status.get("conditions") or [], "Progressing") or {}
    rolling = status.get("phase") == t.Phase.deploying.value and progressing.get("reason") == "Rolling"
    return steady if status.get("phase") in _SETTLED or rolling else fast


def changed_keys(before: Mapping[Key, Any], after: Mapping[Key, Any]) -> set[Key]:
    """Keys whose readings appeared, went or changed between two samples."""
    return {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}


class ReconcileLoop:
    def __init__(self, reconciler: Reconciler, kube: Kube, children: ChildCache, *,
                 scaler_condition: Callable[[str], dict[str, Any] | None] = lambda uid: None,
                 workers: int = 4, fast: float = 5.0, steady: float = 60.0, health_interval: float = 30.0,
                 active: threading.Event | None = None, clock: Callable[[], float] = time.time,
                 events: EventPoster | None = None) -> None:
        self.reconciler = reconciler
        self.kube = kube
        self.children = children
        self.scaler_condition = scaler_condition
        self.workers = workers
        self.fast, self.steady, self.health_interval = fast, steady, health_interval
        self.clock = clock
        # Set while this process is the active operator (peering.py); None: always (standalone).
        self.active = active
        self.queue: WorkQueue[Key] = WorkQueue()
        self.events = events or EventPoster(kube.post_event)
        self._bodies: dict[Key, bytes] = {}
        self._versions: dict[Key, int | None] = {}
        self._errors: dict[Key, int] = {}
        self._bodies_lock = threading.Lock()
        self._locks: dict[Key, threading.Lock] = {}
        self._locks_lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._stopping = threading.Event()
        self.reconciles = 0
        metrics.RECONCILE_BACKLOG.set_function(self.queue.ready)

    # --- what the watches tell --------------------------------------------------------------

    def observe(self, event_type: str | None, body: Mapping[str, Any]) -> None:
        """A ModelDeployment's watch event: keep its newest body and reconcile it."""
        meta = body.get("metadata") or {}
        key = (meta.get("namespace") or "", meta.get("name") or "")
        if event_type == "DELETED":
            self.forget(key)
            return
        if self._keep(key, body):
            self.queue.add(key)

    def _keep(self, key: Key, body: Mapping[str, Any]) -> bool:
        """Keep `body` unless a newer copy is already kept (our own status write's answer can
        arrive before the watch event it caused). True when kept."""
        version = version_of(body)
        data = compact(body)
        with self._bodies_lock:
            held = self._versions.get(key)
            if key in self._bodies and version is not None and held is not None and version < held:
                return False
            self._bodies[key] = data
            self._versions[key] = version
        return True

    def child_changed(self, key: Key) -> None:
        if key in self._bodies:
            self.queue.add(key)

    def forget(self, key: Key) -> None:
        with self._bodies_lock:
            self._bodies.pop(key, None)
            self._versions.pop(key, None)
        self._errors.pop(key, None)
        self.queue.forget(key)
        with self._locks_lock:
            self._locks.pop(key, None)

    def pause(self) -> None:
        """Another operator took over: forget every body (they go stale from now on); kopf lists
        them again, fresh, when this process leads again."""
        with self._bodies_lock:
            keys = list(self._bodies)
            self._bodies.clear()
            self._versions.clear()
        for key in keys:
            self.queue.forget(key)

    def body(self, key: Key) -> dict[str, Any] | None:
        with self._bodies_lock:
            data = self._bodies.get(key)
        return None if data is None else expand(data)

    def __len__(self) -> int:
        return len(self._bodies)

    @contextlib.contextmanager
    def locked(self, key: Key) -> Iterator[None]:
        """Held by a reconcile of `key` and by its deletion handler: never both at once."""
        with self._locks_lock:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            yield

    # --- running ----------------------------------------------------------------------------

    def start(self) -> None:
        self.events.start()
        for i in range(self.workers):
            thread = threading.Thread(target=self._work, name=f"reconcile-{i}", daemon=True)
            thread.start()
            self._threads.append(thread)
        if self.reconciler.fleet_health is not None:
            thread = threading.Thread(target=self._watch_readings, name="reconcile-readings", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout: float = 10.0) -> None:
        self._stopping.set()
        self.queue.close()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        self.events.close(max(0.0, deadline - time.monotonic()))

    def _work(self) -> None:
        # A restarted operator must not take the children it has not listed yet for missing.
        while not self._stopping.is_set() and not self.children.wait_synced(1.0):
            pass
        while not self._stopping.is_set():
            if self.active is not None and not self.active.wait(1.0):
                continue  # a standby, or paused: kopf delivers nothing new either
            key = self.queue.get(timeout=1.0)
            if key is None:
                continue
            try:
                delay = self._reconcile_key(key)
                self._errors.pop(key, None)
            except Exception:  # noqa: BLE001 - one object's failure must not stop the fleet's loop
                failures = self._errors.get(key, 0) + 1
                self._errors[key] = failures
                delay = min(ERROR_FIRST * 2 ** (failures - 1), ERROR_MAX)
                log.exception("%s/%s: reconcile failed (try %d); again in %.0fs", key[0], key[1], failures, delay)
            finally:
                if key in self._bodies and delay is not None:
                    self.queue.add(key, delay)
                self.queue.done(key)

    def _reconcile_key(self, key: Key) -> float | None:
        """One reconcile; when to come back if nothing happens first (None: not at all)."""
        body = self.body(key)
        if body is None or (body.get("metadata") or {}).get("deletionTimestamp"):
            return None  # gone, or kopf's deletion handler has it
        with self.locked(key):
            if key not in self._bodies:
                return None  # deleted while waiting for the lock
            observed = self.children.observed(key)
            jobs_running = any(job.get("active") for job in observed.jobs)
            with metrics.measured("reconcile"):
                outcome = self.reconciler.reconcile(body, observed)
                self._take_scalers_word(body, outcome)
                self._write(key, body, outcome)
        self.reconciles += 1
        auto = (body.get("spec") or {}).get("autoscaling") or {}
        metrics.export_modeldeployment(key[0], key[1], outcome.status, int(auto.get("maxReplicas") or 0))
        return resync_delay(outcome.status, bool(outcome.failures), self.fast, self.steady, jobs_running)

    def _take_scalers_word(self, body: dict[str, Any], outcome: Outcome) -> None:
        """The scaler owns MetricsAvailable: this reconcile may have read the object before the
        scaler's last write, so take the scaler's latest word rather than the snapshot's."""
        latest = self.scaler_condition(body["metadata"].get("uid") or "")
        if latest is not None and outcome.status.get("conditions"):
            conditions = [c for c in outcome.status["conditions"] if c["type"] != "MetricsAvailable"] + [latest]
            conditions.sort(key=lambda c: st.CONDITION_TYPES.index(c["type"]) if c["type"] in st.CONDITION_TYPES else 99)
            outcome.status["conditions"] = conditions

    def _write(self, key: Key, body: dict[str, Any], outcome: Outcome) -> None:
        """The status fields that changed, in one merge patch; then the Events, queued (events.py)."""
        changes = st.status_changes(dict(body.get("status") or {}), outcome.status)
        if changes:
            after = self.kube.patch_status(body["apiVersion"], body["kind"], key[1], key[0], changes)
            metrics.API_WRITES.labels("ModelDeployment", "status").inc()
            self._keep(key, after)
        for type_, reason, message in outcome.events:
            (log.warning if type_ == "Warning" else log.info)("%s/%s: %s: %s", key[0], key[1], reason, message)
            self.events.post(body, type_, reason, message)

    # --- Prometheus readings ------------------------------------------------------------------

    def _watch_readings(self) -> None:
        """Poll the fleet's health (every health interval) and golden-probe quality (every
        QUALITY_MAX_AGE) samples, the ones the reconciles read, and reconcile the objects whose
        readings changed: a settled object is otherwise looked at once a resync."""
        fleet = self.reconciler.fleet_health
        assert fleet is not None
        health: dict[Key, tuple[float | None, ...]] = {}
        quality: dict[Key, Any] = {}
        health_error = quality_error = False
        next_health = next_quality = 0.0
        while not self._stopping.wait(1.0):
            now = self.clock()
            marked: set[Key] = set()
            try:
                if now >= next_health:
                    next_health = now + self.health_interval
                    sample = fleet.sample(max_age=self.health_interval / 2)
                    rows = _health_rows(sample.values)
                    marked |= changed_keys(health, rows)
                    if (sample.error is not None) != health_error:
                        marked |= set(self._bodies)
                    health, health_error = rows, sample.error is not None
                if now >= next_quality:
                    next_quality = now + QUALITY_MAX_AGE
                    q = fleet.quality(max_age=QUALITY_MAX_AGE)
                    marked |= changed_keys(quality, q.values)
                    if (q.error is not None) != quality_error:
                        marked |= set(self._bodies)
                    quality, quality_error = q.values, q.error is not None
            except Exception:  # noqa: BLE001 - the next poll tries again; the resync still comes
                log.exception("reading the fleet's health and quality failed")
            for key in marked:
                self.child_changed(key)


def _health_rows(values: Mapping[str, Mapping[tuple[str, ...], float]]) -> dict[Key, tuple[float | None, ...]]:
    keys = {k for series in values.values() for k in series}
    return {(k[0], k[1]): tuple(values[m].get(k) for m in sorted(values)) for k in keys}

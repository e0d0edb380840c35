"""One reconcile of a ModelDeployment: observe (the caches, the optional kinds served,
Prometheus readings), plan (plan/, pure), apply (through kube/), report (status and Events).
Level-triggered: it recomputes everything from what it sees, so running it twice, or after a
restart, changes nothing that is already right.

A child the API server refuses (a quota, an admission policy, a conflict) does not stop the
reconcile: the rest is applied, the MD says Progressing=False with reason ApplyFailed naming the
child and the server's message, a Warning Event is posted, and the child is tried again after
a back-off that doubles per failure (5 s up to 5 min)."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any, cast

import kopf
import requests
from kubernetes.client.exceptions import ApiException
from kubernetes.dynamic.exceptions import ResourceNotFoundError

from ..api.types import Target
from ..config import OperatorConfig
from ..kube.api import KindNotServed, Kube
from ..optimize.progress import PORT as PROGRESS_PORT
from ..plan import SERVICE_MONITOR, Child, Delete, Observed, Plan, Readings, plan
from ..plan import status as st
from ..resources import access as access_builder
from ..resources import autoscaling as autoscaling_builder
from ..resources.common import LABEL_COMPONENT
from ..scaling import promql
from ..scaling.fleet import FleetHealth
from ..scaling.prometheus import Prometheus, PrometheusError
from . import metrics

Key = tuple[str, str]  # (namespace, ModelDeployment name)
KIND_RECHECK_SECONDS = 60.0
# How often the loop polls the fleet's shared golden-quality sample.
QUALITY_MAX_AGE = 10.0
OPTIONAL_KINDS = (SERVICE_MONITOR, autoscaling_builder.KEDA_API)
BACKOFF_FIRST, BACKOFF_MAX = 5.0, 300.0
_COUNTERS = {"jobs_started": metrics.JOBS_STARTED, "jobs_succeeded": metrics.JOBS_SUCCEEDED, "jobs_failed": metrics.JOBS_FAILED}

__all__ = ["KIND_RECHECK_SECONDS", "Observed", "Outcome", "Reconciler"]


@dataclass
class Outcome:
    """What one reconcile decided; the handler turns it into a status patch and Events."""

    status: dict[str, Any]
    events: list[tuple[str, str, str]] = field(default_factory=list)  # (type, reason, message)
    failures: list[str] = field(default_factory=list)


@dataclass
class _Backoff:
    failures: int
    until: float
    message: str


def server_message(exc: ApiException) -> str:
    """The API server's own words (Status.message) rather than the client's dump of the response."""
    try:
        message = json.loads(exc.body or "{}").get("message")
    except (ValueError, AttributeError):
        message = None
    return str(message or exc.body or exc.reason or exc)[:600]


class Reconciler:
    def __init__(
        self, kube: Kube, config: OperatorConfig, has_service_monitor: bool = False, prom: Prometheus | None = None
    ) -> None:
        self.kube = kube
        self.prom = prom
        self.fleet_health = FleetHealth(prom, config.prometheus_window) if prom is not None else None
        self.config = config
        # Optional kinds (CRDs of other projects): (served, when last asked).
        self._kinds: dict[tuple[str, str], tuple[bool, float]] = {SERVICE_MONITOR: (has_service_monitor, time.time())}
        self._kinds_lock = threading.Lock()
        self._backoff: dict[tuple[str, str, str], _Backoff] = {}
        # What each MD's access Secret holds, as this process last wrote it: (grants, expiry).
        self._signed: dict[Key, tuple[frozenset[str], float]] = {}
        self._store_client: Any = None

    def kind_served(self, api: tuple[str, str], now: float) -> bool:
        """Whether the cluster serves an optional kind (KEDA's ScaledObject, the Prometheus
        operator's ServiceMonitor). A miss is asked again after a minute, so installing one needs
        no operator restart; an apply that finds the kind gone marks it missing."""
        served, checked = self._kinds.get(api, (False, float("-inf")))
        if served or now - checked < KIND_RECHECK_SECONDS:
            return served
        # One handler thread asks the API server; the others that found the answer stale wait
        # for it instead of each running a full discovery.
        with self._kinds_lock:
            served, checked = self._kinds.get(api, (False, float("-inf")))
            if not served and now - checked >= KIND_RECHECK_SECONDS:
                served = self.kube.has_kind(*api)
                self._kinds[api] = (served, now)
        return served

    def reconcile(self, body: dict[str, Any], observed: Observed, now: float | None = None) -> Outcome:
        observed.now = time.time() if now is None else now
        observed.served = frozenset(api for api in OPTIONAL_KINDS if self.kind_served(api, observed.now))
        self._read_metrics(body, observed)
        observed.progress = read_progress(observed.pods)
        decided = plan(body, observed, self.config)
        if self._look_up_uncached(decided, observed):
            decided = plan(body, observed, self.config)
        meta = body["metadata"]
        failures = []
        if access_builder.uses_urls(self.config.artifact_store) and not meta.get("deletionTimestamp"):
            # Before the children: their pods mount the Secret.
            failure = self.grant_access(body, decided.access, observed.now)
            if failure:
                failures.append(failure)
            signed = self._signed.get((meta["namespace"], meta["name"]))
            if signed is not None:
                decided.status["access"] = access_builder.access_status(signed)
        failures += self.apply(meta["namespace"], meta["name"], decided, observed.now)
        outcome = Outcome(status=decided.status, events=decided.events, failures=failures)
        if failures:
            _report_failures(body, outcome)
        for name, n in decided.counts.items():
            _COUNTERS[name].inc(n)
        return outcome

    # --- observe: Prometheus -------------------------------------------------------------

    def _read_metrics(self, body: dict[str, Any], observed: Observed) -> None:
        """Readings the plan will need: the whole MD's from the fleet's shared sample while nothing
        is under analysis (the loop reconciles an object when its readings change), each track's
        while an analysis window is open."""
        if self.prom is None or (body.get("spec") or {}).get("target") == Target.device.value:
            return
        meta, status = body["metadata"], body.get("status") or {}
        rollout = status.get("rollout") or {}
        tracks = []
        if (rollout.get("canary") or {}).get("started") is not None:
            tracks = ["canary", "stable"]
        elif (rollout.get("watch") or {}).get("started") is not None:
            tracks = ["stable"]
        if rollout.get("stable") and not (rollout.get("canary") or rollout.get("watch")):
            self._take_from_fleet(observed, meta["namespace"], meta["name"])
        if rollout.get("stable"):
            self._take_quality(observed, meta["namespace"], meta["name"])
        since = (rollout.get("canary") or {}).get("started")
        for track in tracks:
            counted = observed.now - float(since) if track == "canary" and since is not None else None
            self._take(observed, track, promql.pod_matcher(meta["name"], meta["namespace"], track=track), counted)

    def _take_from_fleet(self, observed: Observed, namespace: str, name: str) -> None:
        """The whole MD's health readings from the fleet's shared sample (three queries per
        health interval for every MD together). The loop's readings thread polls it every
        interval and queues the objects whose readings changed, so a reconcile polls only when
        that thread has fallen two intervals behind."""
        assert self.fleet_health is not None
        sample = self.fleet_health.sample(max_age=2 * self.config.health_interval_seconds)
        if sample.error is not None:
            observed.metrics_errors["all"] = str(sample.error)
            return
        values = sample.of(namespace, name)
        rate = values["requestRate"]
        observed.metrics["all"] = Readings(request_rate=rate, error_ratio=values["errorRatio"] if rate else None,
                                           latency_ms=values["p99LatencyMs"])

    def _take_quality(self, observed: Observed, namespace: str, name: str) -> None:
        """The golden-set probe containers' verdicts on this MD, by revision, from the fleet's
        shared sample (one query every QUALITY_MAX_AGE seconds for every MD together)."""
        assert self.fleet_health is not None
        quality = self.fleet_health.quality(max_age=2 * QUALITY_MAX_AGE)  # polled by the loop, as health
        if quality.error is not None:
            observed.quality_error = str(quality.error)
        else:
            observed.quality = quality.of(namespace, name)

    def _take(self, observed: Observed, key: str, sel: str, count_seconds: float | None = None) -> None:
        """Request rate, error ratio and p99 latency of the selected pods; the requests answered
        over the last `count_seconds` when given (the canary's, since its analysis started)."""
        assert self.prom is not None
        window = self.config.prometheus_window
        try:
            rate = self.prom.query(promql.request_rate(sel, window))
            readings = Readings(request_rate=rate)
            if rate:
                readings.error_ratio = self.prom.query(promql.error_ratio(sel, window))
            readings.latency_ms = self.prom.query(promql.p99_latency_ms(sel, window))
            if count_seconds is not None:
                readings.requests = self.prom.query(promql.request_count(sel, count_seconds))
        except PrometheusError as exc:
            observed.metrics_errors[key] = str(exc)
            return
        observed.metrics[key] = readings

    # --- observe: children the plan wants that the caches don't hold --------------------

    def _look_up_uncached(self, decided: Plan, observed: Observed) -> bool:
        """GET each child the plan would create (none in the caches, which hold only objects with
        our labels). One found is added to `observed` (ours, not yet in the cache; or another's,
        which the plan then reports as ChildConflict). True when any was found: plan again.
        Costs nothing once every child is cached."""
        found = False
        for child in decided.apply:
            if child.observed is not None:
                continue
            meta = child.obj["metadata"]
            try:
                obj = self.kube.get(child.obj["apiVersion"], child.obj["kind"], meta["name"], meta.get("namespace"))
            except (KindNotServed, ResourceNotFoundError):
                continue
            except ApiException:
                continue  # the apply will meet the same error and report it
            if obj is None:
                continue
            found = True
            if child.obj["kind"] == "Job":
                observed.jobs.append(st.summarize_job(obj))
            else:
                observed.children.append(st.summarize_child(obj))
        return found

    # --- apply ---------------------------------------------------------------------------

    def grant_access(self, body: dict[str, Any], grants: dict[str, tuple[str, str]], now: float) -> str | None:
        """Write the MD's access Secret when its grants changed, its URLs are past their refresh
        point (50% to 70% of their lifetime gone: `needs_refresh`), or this process hasn't written
        it yet. The URLs are signed here, with the operator's own keys; nothing is read from the
        tenant's namespace."""
        from ..storage import StorageError
        from ..storage.sign import presign, store_client

        meta = body["metadata"]
        key: Key = (meta["namespace"], meta["name"])
        store = self.config.artifact_store
        names = frozenset(grants)
        if key not in self._signed:
            # A restarted process: the Secret written before still holds good URLs.
            recorded = access_builder.signed_from_status(body.get("status") or {})
            if recorded is not None:
                self._signed[key] = recorded
        if not access_builder.needs_refresh(self._signed.get(key), names, now, store.url_ttl_seconds,
                                            access_builder.refresh_spread(*key)):
            return None
        backoff_key = (key[0], key[1], f"Secret {access_builder.secret_name(key[1])}")
        backoff = self._backoff.get(backoff_key)
        if backoff is not None and now < backoff.until:
            return backoff.message
        expires_at = now + store.url_ttl_seconds
        try:
            if self._store_client is None:
                self._store_client = store_client(store.endpoint, store.region)
            urls = presign(self._store_client, grants, store.url_ttl_seconds)
        except StorageError as exc:
            return self._failed(backoff_key, backoff, now, f"could not sign artifact URLs: {exc}")
        except Exception as exc:  # noqa: BLE001 - botocore's missing-credentials errors and the like; never the keys themselves
            return self._failed(backoff_key, backoff, now, f"could not sign artifact URLs ({type(exc).__name__}): "
                                "does the operator have the store's keys (artifactStore.s3.secret)?")
        secret = access_builder.build_access_secret(key[1], key[0], urls, expires_at)
        kopf.adopt(secret, owner=kopf.Body(cast(kopf.RawBody, body)))
        try:
            self.kube.apply(secret)
        except ApiException as exc:
            return self._failed(backoff_key, backoff, now, f"could not apply Secret {secret['metadata']['name']}: {server_message(exc)}")
        self._backoff.pop(backoff_key, None)
        self._signed[key] = (names, expires_at)
        metrics.API_WRITES.labels("Secret", "apply").inc()
        return None

    def apply(self, namespace: str, md_name: str, decided: Plan, now: float) -> list[str]:
        """Apply the plan's children that differ from the cache and run its deletions. Returns
        one message per child the API server refused (now, or still in back-off)."""
        failures: list[str] = []
        for child in decided.apply:
            if not child.up_to_date:
                failure = self._apply_child(namespace, md_name, child, now)
                if failure:
                    failures.append(failure)
        for gone in decided.delete:
            failure = self._delete(gone)
            if failure:
                failures.append(failure)
        return failures

    def _apply_child(self, namespace: str, md_name: str, child: Child, now: float) -> str | None:
        key = (namespace, md_name, child.ref)
        backoff = self._backoff.get(key)
        if backoff is not None and now < backoff.until:
            return backoff.message
        try:
            self.kube.apply(child.obj, child.uid)
        except KindNotServed as exc:
            if child.optional:  # its CRD went away: the rest of the reconcile goes on
                self._kinds[(child.obj["apiVersion"], child.obj["kind"])] = (False, now)
                return None
            return self._failed(key, backoff, now, f"could not apply {child.ref}: {exc}")
        except ApiException as exc:
            return self._failed(key, backoff, now, f"could not apply {child.ref}: {server_message(exc)}")
        self._backoff.pop(key, None)
        metrics.API_WRITES.labels(child.obj["kind"], "apply").inc()
        if child.counter:
            _COUNTERS[child.counter].inc()
        return None

    def _failed(self, key: tuple[str, str, str], backoff: _Backoff | None, now: float, message: str) -> str:
        failures = (backoff.failures if backoff else 0) + 1
        delay = min(BACKOFF_FIRST * 2 ** (failures - 1), BACKOFF_MAX)
        self._backoff[key] = _Backoff(failures, now + delay, message)
        metrics.API_WRITES.labels(key[2].split(" ")[0], "apply-failed").inc()
        return message

    def _delete(self, gone: Delete) -> str | None:
        try:
            self.kube.delete(gone.api_version, gone.kind, gone.name, gone.namespace, propagation=gone.propagation, uid=gone.uid)
        except ApiException as exc:
            return f"could not delete {gone.kind} {gone.name}: {server_message(exc)}"
        metrics.API_WRITES.labels(gone.kind, "delete").inc()
        return None

    def forget(self, namespace: str, name: str) -> None:
        self._signed.pop((namespace, name), None)
        for key in [k for k in self._backoff if k[:2] == (namespace, name)]:
            self._backoff.pop(key, None)


PROGRESS_TIMEOUT = 1.0


def read_progress(pods: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """What each running worker pod answers on /progress, by Job name. A worker that does not
    answer (starting, an older image) has no entry: status then says only that the Job runs."""
    out: dict[str, dict[str, Any]] = {}
    for pod in pods:
        labels = pod.get("labels", {})
        if labels.get(LABEL_COMPONENT) != "optimizer" or pod.get("phase") != "Running" or not pod.get("podIP") or pod.get("deleting"):
            continue
        try:
            resp = requests.get(f"http://{pod['podIP']}:{PROGRESS_PORT}/progress", timeout=PROGRESS_TIMEOUT)
            data = resp.json() if resp.status_code == 200 else None
        except (requests.RequestException, ValueError):
            continue
        if isinstance(data, dict) and labels.get("job-name"):
            out[labels["job-name"]] = data
    return out


def _report_failures(body: dict[str, Any], outcome: Outcome) -> None:
    """Progressing=False/ApplyFailed with every refusal; a Warning Event when the message is new;
    a worker Job that never got created is no JobStarted."""
    message = "; ".join(outcome.failures)[:1024]
    generation = body["metadata"].get("generation")
    before = st.get_condition(list((body.get("status") or {}).get("conditions") or []), "Progressing") or {}
    # From the condition as it was, so its transition time stays put while the refusal lasts.
    conditions = [c for c in outcome.status.get("conditions") or [] if c.get("type") != "Progressing"] + ([before] if before else [])
    conditions = st.set_condition(conditions, "Progressing", "False", "ApplyFailed", message, generation)
    started = st.get_condition(conditions, "OptimizationSucceeded") or {}
    if started.get("reason") == "JobStarted" and any(" Job " in f for f in outcome.failures):
        conditions = st.set_condition(conditions, "OptimizationSucceeded", "Unknown", "ApplyFailed", message, generation)
    outcome.status["conditions"] = conditions
    if before.get("reason") != "ApplyFailed" or before.get("message") != message[:1024]:
        outcome.events.append(("Warning", "ApplyFailed", message))

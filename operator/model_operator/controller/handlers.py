"""kopf registrations. Thin on purpose: each handler gathers what kopf hands it, calls the
reconciler or a builder, and turns the outcome into a status patch and Events."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import time
from collections.abc import Mapping
from typing import Any

import kopf

from ..api import types as t
from ..config import OperatorConfig
from ..kube.api import Kube
from ..kube.informer import Informer, informer_client
from ..kube.session import bounded_session, connection_limit
from ..resources import common as names
from ..scaling.fleet import FleetMetrics
from ..scaling.prometheus import AsyncPrometheus, Prometheus, PrometheusError
from . import children, finalize, metrics, metrics_server, scaler
from .loop import ReconcileLoop
from .peering import PeeringGate
from .reconcile import Reconciler

GROUP, VERSION, PLURAL = t.GROUP, t.VERSION, t.PLURAL
MANAGED = names.MANAGED_BY

def _reconcile_interval() -> float:
    """kopf fixes timer intervals at import, so the configured one is read here: from the config
    file `model-operator run` names (main.py sets $MODEL_OPERATOR_CONFIG before importing this
    module), unless $MODEL_OPERATOR_RECONCILE_INTERVAL_SECONDS overrides it."""
    override = os.environ.get("MODEL_OPERATOR_RECONCILE_INTERVAL_SECONDS")
    if override:
        return float(override)
    return OperatorConfig.load(os.environ.get("MODEL_OPERATOR_CONFIG")).reconcile_interval_seconds


RECONCILE_INTERVAL = _reconcile_interval()
SCALER_TICK = float(os.environ.get("MODEL_OPERATOR_SCALER_TICK_SECONDS", "1"))


def _config(memo: kopf.Memo) -> OperatorConfig:
    """The operator's configuration: what `model-operator run` put in the memo, else (an embedded
    or KopfRunner operator) the file $MODEL_OPERATOR_CONFIG names, loaded once."""
    if getattr(memo, "config", None) is None:
        memo.config = OperatorConfig.load(os.environ.get("MODEL_OPERATOR_CONFIG"))
    config: OperatorConfig = memo.config
    return config


def in_cluster_address(info: kopf.ConnectionInfo | None, env: Mapping[str, str] = os.environ) -> kopf.ConnectionInfo | None:
    """kopf's service-account login names the API server `kubernetes.default.svc`, which needs
    cluster DNS; the kubelet also gives every pod the Service's address in
    $KUBERNETES_SERVICE_HOST/PORT, which is what client-go uses, so use that when it is there."""
    host, port = env.get("KUBERNETES_SERVICE_HOST"), env.get("KUBERNETES_SERVICE_PORT")
    if info is None or not host or not port:
        return info
    host = f"[{host}]" if ":" in host else host
    return dataclasses.replace(info, server=f"https://{host}:{port}")


@kopf.on.login()
async def login(memo: kopf.Memo, **kwargs: Any) -> kopf.AiohttpSession | None:
    """In-cluster token first, else $KUBECONFIG as it is now (the client library reads it only
    when it is imported, which breaks a kubeconfig chosen later, as tests do); served through
    a session with a bounded connection pool (kube/session.py says why)."""
    info = in_cluster_address(kopf.login_with_service_account(**kwargs)) or kopf.login_with_kubeconfig(**kwargs)
    if info is None:
        return None
    config = _config(memo)
    namespaces = getattr(memo, "namespaces", None) or config.namespaces
    limit = connection_limit(WATCHED_KINDS, len(namespaces), config.api_request_connections)
    return bounded_session(info, limit)


class _RoutineSuccess(logging.Filter):
    """Drops kopf's "Timer 'x' succeeded." / "Handler 'x' succeeded." lines: with a timer per
    object they are thousands of lines a minute in a large fleet, and say nothing."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = str(record.msg)
        return not (record.levelno == logging.INFO and msg.endswith("succeeded.") and msg.startswith(("Timer ", "Handler ")))


class NoDiffBase(kopf.DiffBaseStorage):
    """kopf keeps the last handled spec of each object, for on.update handlers' diffs, in an
    annotation. There are no such handlers here (the loop recomputes from the object itself), so
    the annotation was only one more PATCH per new object (about 40 a second through a
    10,000-object cold start) and a copy of the spec on every object. Nothing is kept: kopf sees
    each event as a creation, for which nothing is registered."""

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        return None


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, logger: kopf.Logger, **_: Any) -> None:
    config = _config(memo)
    objects_log = logging.getLogger("kopf.objects")
    if not any(isinstance(f, _RoutineSuccess) for f in objects_log.filters):
        objects_log.addFilter(_RoutineSuccess())
    settings.persistence.finalizer = f"{t.GROUP}/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=t.GROUP)
    settings.persistence.diffbase_storage = NoDiffBase()
    # Only our explicit Events reach the API server; handler log lines stay in the log.
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.connect_timeout = 30
    # Lists (at start and after each watch expires) come in pages: one response for every object
    # of a large fleet is held as bytes, text and parsed objects at once.
    settings.watching.chunk_size = 100
    # A per-object worker keeps its object's last event (the whole body) while it idles for more;
    # at a cold start every child is busy at once. 0.5 s instead of kopf's 5 s: the 1,000-object
    # cold start peaked 20 MiB (6%) lower; a new event after that costs a new task, not a list.
    settings.queueing.idle_timeout = 0.5
    filter_watches_on_the_server(settings, config.shard)
    settings.networking.request_timeout = 60
    kube = Kube()
    memo.kube = kube
    memo.reconciler = Reconciler(
        kube,
        config,
        has_service_monitor=kube.has_kind("monitoring.coreos.com/v1", "ServiceMonitor"),
        prom=Prometheus(config.prometheus_url, config.prometheus_timeout_seconds),
    )
    memo.fleet = FleetMetrics(AsyncPrometheus(config.prometheus_url, config.prometheus_timeout_seconds),
                              config.prometheus_window, on_poll=_count_poll)
    if config.metrics_port and not getattr(memo, "metrics_started", False):
        metrics_server.serve(config.metrics_port)
        memo.metrics_started = True
    logger.info(
        "model-operator configured: store %s, pools %s, metrics on :%s",
        config.artifact_store.type, sorted(config.node_pools) or "none", config.metrics_port,
    )


# --- children: informers (kube/informer.py) keep the cache the reconciles read (children.py) -------

# (group, version, plural, kind, the cache's list). KEDA's and the Prometheus operator's kinds are
# listed while the cluster serves them, and asked for again every minute while it doesn't.
CHILD_STREAMS = (
    ("batch", "v1", "jobs", "Job", children.JOBS),
    ("", "v1", "pods", "Pod", children.PODS),
    ("apps", "v1", "deployments", "Deployment", children.OTHERS),
    ("", "v1", "services", "Service", children.OTHERS),
    ("policy", "v1", "poddisruptionbudgets", "PodDisruptionBudget", children.OTHERS),
    ("autoscaling", "v2", "horizontalpodautoscalers", "HorizontalPodAutoscaler", children.OTHERS),
    ("keda.sh", "v1alpha1", "scaledobjects", "ScaledObject", children.OTHERS),
    ("monitoring.coreos.com", "v1", "servicemonitors", "ServiceMonitor", children.OTHERS),
)
# Every kind the operator watches besides its own: (group, version, plural).
CHILD_KINDS = tuple((g, v, p) for g, v, p, _, _ in CHILD_STREAMS)
# The streams on kopf's session: the ModelDeployments' (the children's have a client of their own).
WATCHED_KINDS = 1


def managed_selector(shard: str = "") -> str:
    """The label selector the API server applies to every child list and watch: ours, of our shard."""
    return ",".join([*(f"{k}={v}" for k, v in sorted(MANAGED.items())), names.shard_selector(shard)])


def filter_watches_on_the_server(settings: kopf.OperatorSettings, shard: str = "") -> None:
    """kopf's `labels=` filters run in the operator, after every object has been streamed and
    decoded; settings.watching.label_selectors go into the list and watch requests, so the API
    server sends only this shard's ModelDeployments (config.shard)."""
    settings.watching.label_selectors[GROUP, VERSION, PLURAL] = names.shard_selector(shard)


def start_informers(cache: children.ChildCache, namespaces: list[str], shard: str) -> list[Informer]:
    """One list-and-watch per child kind, per watched namespace (or cluster-wide)."""
    scopes: list[str | None] = list(namespaces) or [None]
    client = informer_client(len(CHILD_STREAMS) * len(scopes))
    informers = [Informer(client, g, v, p, kind, ns, managed_selector(shard), cache, group)
                 for g, v, p, kind, group in CHILD_STREAMS for ns in scopes]
    for informer in informers:
        cache.expect(informer.stream)
    for informer in informers:
        informer.start()
    return informers


# --- the ModelDeployments: their events feed the reconcile loop (loop.py) and the scaler ----------


@kopf.on.startup()
def start_loop(memo: kopf.Memo, **_: Any) -> None:
    """After configure (kopf runs startup handlers in the order they were registered)."""
    config = _config(memo)
    cache = children.ChildCache()
    loop = ReconcileLoop(memo.reconciler, memo.kube, cache, scaler_condition=lambda uid: memo.fleet_scaler.conditions.get(uid),
                         workers=config.reconcile_workers, fast=RECONCILE_INTERVAL, steady=config.resync_seconds,
                         health_interval=config.health_interval_seconds)
    cache.on_change = loop.child_changed
    namespaces = getattr(memo, "namespaces", None) or config.namespaces
    memo.children = cache
    memo.loop = loop
    memo.informers = start_informers(cache, list(namespaces), config.shard)
    memo.gate = None
    if getattr(memo, "peering", None):
        def paused() -> None:
            loop.pause()
            memo.fleet_scaler.pause()

        kube: Kube = memo.kube
        memo.gate = PeeringGate(lambda: kube.peering_statuses(memo.peering, list(namespaces)), memo.identity, memo.priority,
                                on_pause=paused)
        loop.active = memo.gate.active
        memo.gate.start()
    loop.start()


@kopf.on.event(GROUP, VERSION, PLURAL)
async def on_event(type: str | None, namespace: str | None, name: str, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """Every change of a ModelDeployment, ours included: the loop keeps the newest body and
    reconciles it; the scaler keeps its view. Not a kopf index: kopf holds every worker of an
    indexed kind until each object of the initial list is indexed, waking all of them for each
    one; at 10,000 ModelDeployments that held the operator for minutes before its first reconcile."""
    memo.loop.observe(type, body)
    memo.fleet_scaler.track((namespace or "", name), None if type == "DELETED" else scaler.view(body))


@kopf.on.delete(GROUP, VERSION, PLURAL)
def on_delete(body: kopf.Body, memo: kopf.Memo, logger: kopf.Logger, retry: int, started: Any, **_: Any) -> None:
    key = (body["metadata"]["namespace"], body["metadata"]["name"])
    with memo.loop.locked(key), metrics.measured("delete"):
        finalize.finalize(dict(body), memo.kube, memo.config, logger, retry=retry, started=started)
    memo.reconciler.forget(*key)
    memo.fleet_scaler.forget(body["metadata"]["uid"])
    metrics.forget_modeldeployment(*key)


@kopf.on.cleanup()
def stop_loop(memo: kopf.Memo, **_: Any) -> None:
    for informer in getattr(memo, "informers", []):
        informer.stop()
    if getattr(memo, "gate", None) is not None:
        memo.gate.stop()
    loop = getattr(memo, "loop", None)
    if loop is not None:
        loop.stop()


def _count_poll(queries: int, error: Exception | None) -> None:
    metrics.SCALER_QUERIES.inc(queries)
    if isinstance(error, PrometheusError):
        metrics.PROMETHEUS_ERRORS.labels(error.cause).inc()


# --- the built-in autoscaler: one loop for the fleet (controller/scaler.py says why) --------------


@kopf.on.startup()
async def start_scaler(memo: kopf.Memo, **_: Any) -> None:
    """After configure (kopf runs startup handlers in the order they were registered)."""
    kube: Kube = memo.kube
    fleet = scaler.FleetScaler(memo.fleet, lambda v, w: scaler.write_through(kube, v, w))
    memo.fleet_scaler = fleet
    gate = getattr(memo, "gate", None)
    memo.scaler_task = asyncio.create_task(fleet.run(SCALER_TICK, time.time, gate.active.is_set if gate is not None else lambda: True))


@kopf.on.cleanup()
async def stop_scaler(memo: kopf.Memo, **_: Any) -> None:
    task = getattr(memo, "scaler_task", None)
    if task is not None:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        # The writes on their way get a few seconds; an API server that is gone must not hold
        # the shutdown (what is not written is decided again by the next process).
        try:
            await asyncio.wait_for(memo.fleet_scaler.drain(), timeout=10)
        except asyncio.TimeoutError:
            logging.getLogger(__name__).warning("scaler: %d status writes left unfinished at shutdown", len(memo.fleet_scaler.in_flight))
        memo.fleet_scaler.pool.shutdown(wait=False, cancel_futures=True)

"""The API server filters the operator's child watches: an object the operator does not manage is
never sent to it, on the initial list or on a later watch event.

Only the labelSelector of the list and watch requests keeps the cluster's other Pods,
Deployments, Services... off the wire. The test records every object the operator's informers
hand to its child cache (the point where the API server's answer enters the operator, before the
cache looks at any label) and every raw event kopf's watch streams yield, and checks that a
managed object arrives while unrelated ones, created before and after the start, never do."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from kopf._cogs.clients import watching

from kubetest.wait import wait_for
from model_operator.controller import children

pytestmark = pytest.mark.e2e

MANAGED = {"app.kubernetes.io/managed-by": "model-operator", "serving.model-operator.io/deployment": "filtered"}


@pytest.fixture
def delivered(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[str, str, str]]]:
    """(plural, namespace, name) of every object the informers and kopf's watch streams deliver in
    this process."""
    seen: list[tuple[str, str, str]] = []
    lock = threading.Lock()
    original = watching.infinite_watch
    upsert = children.ChildCache.upsert
    plurals = {"Pod": "pods", "Service": "services", "Deployment": "deployments", "Job": "jobs"}

    def recording_upsert(self: children.ChildCache, group: str, obj: dict[str, Any]) -> None:
        meta = obj.get("metadata") or {}
        with lock:
            seen.append((plurals.get(obj.get("kind") or "", str(obj.get("kind"))), meta.get("namespace") or "", meta.get("name") or ""))
        upsert(self, group, obj)

    async def recording(**kwargs: Any) -> AsyncIterator[Any]:
        plural = kwargs["resource"].plural
        async for event in original(**kwargs):
            obj = event.get("object") if isinstance(event, dict) else None
            if isinstance(obj, dict):
                meta = obj.get("metadata") or {}
                with lock:
                    seen.append((plural, meta.get("namespace") or "", meta.get("name") or ""))
            yield event

    monkeypatch.setattr(watching, "infinite_watch", recording)
    monkeypatch.setattr(children.ChildCache, "upsert", recording_upsert)
    yield seen


def _meta(name: str, labels: dict[str, str]) -> dict[str, Any]:
    return {"name": name, "labels": labels}


def _service(name: str, labels: dict[str, str]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service", "metadata": _meta(name, labels),
            "spec": {"ports": [{"port": 80}], "selector": {"app": name}}}


# The test namespace enforces the restricted Pod Security Standard.
CONTAINERS = [{"name": "c", "image": "unused", "securityContext": {
    "allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}, "runAsNonRoot": True, "runAsUser": 1000,
    "seccompProfile": {"type": "RuntimeDefault"}}}]


def _pod(name: str, labels: dict[str, str]) -> dict[str, Any]:
    # Pinned to a node name that does not exist: it stays Pending, no kubelet runs it.
    return {"apiVersion": "v1", "kind": "Pod", "metadata": _meta(name, labels), "spec": {"nodeName": "no-such-node", "containers": CONTAINERS}}


def _deployment(name: str, labels: dict[str, str]) -> dict[str, Any]:
    match = {"app": name}
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": _meta(name, labels),
            "spec": {"replicas": 0, "selector": {"matchLabels": match},
                     "template": {"metadata": {"labels": match}, "spec": {"containers": CONTAINERS}}}}


def _job(name: str, labels: dict[str, str]) -> dict[str, Any]:
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": _meta(name, labels),
            "spec": {"suspend": True, "template": {"spec": {"restartPolicy": "Never", "containers": CONTAINERS}}}}


def test_unrelated_children_never_reach_the_operator(
    start_operator: Any, delivered: list[tuple[str, str, str]], namespace: str, core_api: Any, apps_api: Any, batch_api: Any,
) -> None:
    def create(prefix: str, labels: dict[str, str]) -> set[tuple[str, str, str]]:
        core_api.create_namespaced_pod(namespace, _pod(prefix, labels))
        core_api.create_namespaced_service(namespace, _service(prefix, labels))
        apps_api.create_namespaced_deployment(namespace, _deployment(prefix, labels))
        batch_api.create_namespaced_job(namespace, _job(prefix, labels))
        return {(plural, namespace, prefix) for plural in ("pods", "services", "deployments", "jobs")}

    def arrived(expected: set[tuple[str, str, str]]) -> bool:
        return expected <= set(delivered)

    # Another tool's objects, one of them carrying a deployment label like the operator's.
    lookalike = {"serving.model-operator.io/deployment": "filtered", "app.kubernetes.io/managed-by": "someone-else"}
    create("unrelated-before", {"app": "other"})  # on the initial list
    create("lookalike-before", lookalike)
    start_operator()
    first = create("managed-before", MANAGED)
    wait_for(lambda: arrived(first), timeout=60, message="the managed Pod, Service, Deployment and Job delivered")
    create("unrelated-after", {"app": "other"})  # on the watch
    create("lookalike-after", lookalike)
    # Each kind's watch delivers its events in order: once the managed object created last has
    # arrived, the unrelated ones created before it would have arrived too, were they sent.
    last = create("managed-after", MANAGED)
    wait_for(lambda: arrived(last), timeout=60, message="the second managed Pod, Service, Deployment and Job delivered")
    mine = sorted({(plural, name) for plural, ns, name in delivered if ns == namespace})
    assert [(p, n) for p, n in mine if not n.startswith("managed-")] == [], mine

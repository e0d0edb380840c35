"""The operator's child informer on a real API server: the first list, then watch events across
several watches the API server ends (each resumed from the last version seen, never listed
again), an owner label moved, a delete, and a stop that ends the watch at once."""

from __future__ import annotations

import time
from typing import Any

import pytest

from kubetest.wait import wait_for
from model_operator.controller import handlers
from model_operator.controller.children import OTHERS, ChildCache
from model_operator.kube import informer as informer_mod
from model_operator.kube.informer import Informer

pytestmark = pytest.mark.e2e

OWNER = "serving.model-operator.io/deployment"


def _service(name: str, labels: dict[str, str]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "labels": labels},
            "spec": {"ports": [{"port": 80}], "selector": {"app": name}}}


def _managed(owner: str) -> dict[str, str]:
    return {"app.kubernetes.io/managed-by": "model-operator", OWNER: owner}


def test_an_informer_lists_then_follows_the_watch_across_renewals(
        kube: Any, core_api: Any, namespace: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(informer_mod, "WATCH_SECONDS", 2)  # the API server ends each watch after 2 s
    core_api.create_namespaced_service(namespace, _service("before", _managed("md-a")))
    core_api.create_namespaced_service(namespace, _service("stray", {OWNER: "md-a"}))  # not managed: never sent
    marked: list[tuple[str, str]] = []
    cache = ChildCache(marked.append)
    inf = Informer(kube, "", "v1", "services", "Service", namespace, handlers.managed_selector(), cache, OTHERS)
    cache.expect(inf.stream)
    inf.start()
    try:
        wait_for(cache.synced, timeout=30, message="the first list")

        def names(owner: str) -> list[str]:
            return sorted(c["name"] for c in cache.observed((namespace, owner)).children)

        assert names("md-a") == ["before"] and cache.size() == 1
        wait_for(lambda: inf.watches >= 3, timeout=30, message="two watches ended by the API server and resumed")
        core_api.create_namespaced_service(namespace, _service("after", _managed("md-a")))
        wait_for(lambda: names("md-a") == ["after", "before"], timeout=30, message="the created Service in the cache")
        core_api.patch_namespaced_service("before", namespace, {"metadata": {"labels": {OWNER: "md-b"}}})
        wait_for(lambda: names("md-a") == ["after"] and names("md-b") == ["before"], timeout=30, message="the moved Service")
        core_api.delete_namespaced_service("after", namespace)
        wait_for(lambda: names("md-a") == [], timeout=30, message="the deleted Service gone from the cache")
        assert ("", "md-a") not in marked and (namespace, "md-b") in marked
        assert inf.lists == 1, "a resumed watch must not list again"
    finally:
        inf.stop()
    started = time.monotonic()
    assert inf._thread is not None
    inf._thread.join(10)
    assert not inf._thread.is_alive(), "stop() must end the watch"
    assert time.monotonic() - started < 10

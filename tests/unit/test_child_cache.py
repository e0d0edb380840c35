"""The child cache the informers fill: summaries by owner, a change marks the owner, a full list
drops what it no longer holds."""

from __future__ import annotations

from typing import Any

from model_operator.controller.children import JOBS, OTHERS, PODS, ChildCache

OWNER = "serving.model-operator.io/deployment"


def obj(kind: str, name: str, owner: str | None, ns: str = "ns", **status: Any) -> dict[str, Any]:
    labels = {OWNER: owner} if owner else {}
    return {"kind": kind, "metadata": {"name": name, "namespace": ns, "labels": labels, "uid": f"uid-{name}"}, "status": status}


def test_children_land_in_their_owners_lists_and_changes_mark_the_owner() -> None:
    marked: list[tuple[str, str]] = []
    cache = ChildCache(marked.append)
    cache.upsert(OTHERS, obj("Deployment", "md-a", "md-a", readyReplicas=1))
    cache.upsert(JOBS, obj("Job", "md-a-opt", "md-a", active=1))
    cache.upsert(PODS, obj("Pod", "md-a-1", "md-a", phase="Running"))
    cache.upsert(OTHERS, obj("Service", "md-b", "md-b"))
    seen = cache.observed(("ns", "md-a"))
    assert [c["name"] for c in seen.children] == ["md-a"] and seen.children[0]["status"] == {"readyReplicas": 1}
    assert [j["name"] for j in seen.jobs] == ["md-a-opt"] and seen.jobs[0]["active"] == 1
    assert [p["phase"] for p in seen.pods] == ["Running"]
    assert marked == [("ns", "md-a")] * 3 + [("ns", "md-b")]
    # The same summary again (a status heartbeat that changes nothing the plan reads): no reconcile.
    cache.upsert(OTHERS, obj("Deployment", "md-a", "md-a", readyReplicas=1))
    assert len(marked) == 4
    cache.upsert(OTHERS, obj("Deployment", "md-a", "md-a", readyReplicas=2))
    assert marked[-1] == ("ns", "md-a") and cache.observed(("ns", "md-a")).children[0]["status"] == {"readyReplicas": 2}


def test_an_object_without_an_owner_label_is_not_kept() -> None:
    cache = ChildCache()
    cache.upsert(OTHERS, obj("Service", "stray", None))
    assert cache.size() == 0


def test_a_child_relabelled_to_another_owner_leaves_the_first() -> None:
    marked: list[tuple[str, str]] = []
    cache = ChildCache(marked.append)
    cache.upsert(OTHERS, obj("Service", "svc", "md-a"))
    cache.upsert(OTHERS, obj("Service", "svc", "md-b"))
    assert cache.observed(("ns", "md-a")).children == []
    assert [c["name"] for c in cache.observed(("ns", "md-b")).children] == ["svc"]
    assert marked == [("ns", "md-a"), ("ns", "md-a"), ("ns", "md-b")]


def test_remove_and_replace_drop_children_and_mark_their_owners() -> None:
    marked: list[tuple[str, str]] = []
    cache = ChildCache(marked.append)
    cache.upsert(OTHERS, obj("Deployment", "md-a", "md-a"))
    cache.upsert(OTHERS, obj("Deployment", "md-b", "md-b"))
    cache.upsert(OTHERS, obj("Deployment", "md-c", "md-c", ns="other"))
    cache.upsert(OTHERS, obj("Service", "md-a", "md-a"))
    marked.clear()
    cache.remove(OTHERS, obj("Service", "md-a", "md-a"))
    assert [c["kind"] for c in cache.observed(("ns", "md-a")).children] == ["Deployment"]
    # A relist of Deployments in "ns" (after a 410) that no longer holds md-a: md-a's goes, md-b's
    # stays, and another namespace's list is not this one's to judge.
    cache.replace(OTHERS, "Deployment", "ns", [obj("Deployment", "md-b", "md-b")])
    assert cache.observed(("ns", "md-a")).children == []
    assert [c["name"] for c in cache.observed(("other", "md-c")).children] == ["md-c"]
    assert marked == [("ns", "md-a"), ("ns", "md-a")]
    # The same name of another kind is another child.
    cache.upsert(OTHERS, obj("Service", "md-b", "md-b"))
    assert sorted(c["kind"] for c in cache.observed(("ns", "md-b")).children) == ["Deployment", "Service"]


def test_synced_only_when_every_expected_stream_listed() -> None:
    cache = ChildCache()
    cache.expect("pods/*")
    cache.expect("jobs/*")
    cache.mark_synced("pods/*")
    assert not cache.synced() and not cache.wait_synced(0.01)
    cache.mark_synced("jobs/*")
    assert cache.synced() and cache.wait_synced(0)

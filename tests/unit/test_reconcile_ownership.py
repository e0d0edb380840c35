"""The controller's side of ownership: children its caches can't hold (objects without our
labels) are looked up before anything is applied; a stranger is left alone (ChildConflict), our
own is applied by its uid, and children that don't exist yet are created, never merged into."""

from __future__ import annotations

from typing import Any

from test_plan import NOW, condition, ready_children, serving_md
from test_reconcile_apply import FakeKube, reconciler

from model_operator.plan import Observed


def _serving_doc() -> dict[str, Any]:
    doc, _ = serving_md()
    return doc


def test_an_unlabelled_object_with_a_childs_name_is_found_and_left_alone() -> None:
    foreign = {"kind": "Deployment", "metadata": {"name": "digits-cloud-triton", "uid": "f-1"}, "spec": {}, "status": {}}
    kube = FakeKube(existing=[foreign])
    out = reconciler(kube).reconcile(_serving_doc(), Observed(), now=NOW)
    assert "Deployment digits-cloud-triton" in kube.got
    assert "Deployment digits-cloud-triton" not in kube.uids, "never applied to"
    assert {"Service digits-cloud-triton", "PodDisruptionBudget digits-cloud-triton"} <= kube.uids.keys()
    assert all(uid is None for uid in kube.uids.values()), "children not found are applied without a uid (and without force)"
    cond = condition(out.status["conditions"], "Progressing")
    assert cond["reason"] == "ChildConflict" and "Deployment digits-cloud-triton already exists" in cond["message"]


def test_our_child_not_yet_in_the_cache_is_applied_by_its_uid() -> None:
    ours = {"kind": "Service", "metadata": {"name": "digits-cloud-triton", "uid": "s-1", "ownerReferences": [
        {"kind": "ModelDeployment", "name": "digits-cloud", "uid": "uid-1", "controller": True}]}, "spec": {}}
    kube = FakeKube(existing=[ours])
    out = reconciler(kube).reconcile(_serving_doc(), Observed(), now=NOW)
    assert kube.uids["Service digits-cloud-triton"] == "s-1"
    assert "ChildConflict" not in str(out.status)


def test_cached_children_cost_no_lookups() -> None:
    doc, first = serving_md()
    kube = FakeKube()
    reconciler(kube).reconcile(doc, Observed(children=ready_children(first)), now=NOW)
    assert kube.got == [] and kube.applied == []

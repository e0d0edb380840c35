"""Multi-tenant safety, the pure parts: the image allow-list (a tenant's serving.tritonImage runs
only when the operator's configuration allows it) and ownership (plan() never applies to or
deletes an object this ModelDeployment does not control; a same-named stranger is ChildConflict)."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError
from test_plan import CONFIG, NOW, OURS, condition, conditions, job_name, kinds, md, ready_children, serving_md

from model_operator.config import NodePool, OperatorConfig
from model_operator.plan import Observed, plan
from model_operator.plan import status as st
from model_operator.resources import images

DIGEST = "sha256:" + "ab" * 32

# --- image references and patterns ------------------------------------------------------------


@pytest.mark.parametrize(("ref", "parts"), [
    ("tritonserver:24.10-py3", ("tritonserver", "24.10-py3", None)),
    ("registry.example:5000/ml/triton", ("registry.example:5000/ml/triton", None, None)),
    (f"registry.example/triton:1@{DIGEST}", ("registry.example/triton", "1", DIGEST)),
    ("localhost:5000", ("localhost", "5000", None)),  # a tag: a registry needs a path after it
    # A tag can't hold '/': this is the repository other/image on the registry tritonserver:5000.
    ("tritonserver:5000/other/image", ("tritonserver:5000/other/image", None, None)),
])
def test_references_parse_by_the_grammar(ref: str, parts: tuple[str, str | None, str | None]) -> None:
    assert images.parse(ref) == images.ImageRef(*parts)


@pytest.mark.parametrize("ref", ["", "a//b", "triton:", "Triton/x:1 ", "x@sha256:short", "-x", "x" * 600])
def test_non_references_do_not_parse(ref: str) -> None:
    assert images.parse(ref) is None


@pytest.mark.parametrize(("image", "pattern", "allowed"), [
    ("tritonserver:24.10-py3", "tritonserver", True),
    (f"tritonserver@{DIGEST}", "tritonserver", True),
    ("tritonserver", "tritonserver", True),
    ("tritonserver:5000/other/image", "tritonserver", False),
    ("tritonserver-evil:1", "tritonserver", False),
    ("evil/tritonserver:1", "tritonserver", False),
    ("registry.example/ml/triton:1", "registry.example/ml/triton:1", True),
    ("registry.example/ml/triton:2", "registry.example/ml/triton:1", False),
    (f"registry.example/ml/triton@{DIGEST}", f"registry.example/ml/triton@{DIGEST}", True),
    ("registry.example/ml/triton:1", f"registry.example/ml/triton@{DIGEST}", False),
    ("registry.example/ml/triton:1", "registry.example/*", True),
    ("registry.example/a/b/c:1", "registry.example/a/*", True),
    ("registry.example.evil/ml/triton:1", "registry.example/*", False),
    ("registry.example:5000/ml/triton:1", "registry.example/*", False),
    ("registry.example", "registry.example/*", False),
    ("not a reference", "not", False),
])
def test_patterns(image: str, pattern: str, allowed: bool) -> None:
    assert images.allowed(image, [pattern]) is allowed


def test_refusal_names_the_field_the_image_and_every_pattern() -> None:
    message = images.refusal("serving.tritonImage", "evil/miner:1", ["tritonserver", "registry.example/*"])
    assert message is not None
    assert "serving.tritonImage" in message and "'evil/miner:1'" in message
    assert "tritonserver, registry.example/*" in message and "not allowed" in message
    bad = images.refusal("serving.tritonImage", "a//b", ["tritonserver"])
    assert bad is not None and "not a valid image reference" in bad
    assert images.refusal("serving.tritonImage", "tritonserver:25.01", ["tritonserver"]) is None


def test_config_default_allows_only_the_triton_images_repository() -> None:
    assert OperatorConfig(triton_image="registry.example:5000/ml/tritonserver:24.10").triton_image_patterns() == [
        "registry.example:5000/ml/tritonserver"]
    assert OperatorConfig(allowed_triton_images=["a/*", "b:1"]).triton_image_patterns() == ["a/*", "b:1"]


def test_config_refuses_a_pattern_that_can_never_match() -> None:
    with pytest.raises(ValidationError, match=r"allowed_triton_images: 'has space/\*', 'x/\*/\*' can never match"):
        OperatorConfig(allowed_triton_images=["ok/*", "has space/*", "x/*/*"])


# --- the image policy in plan() ------------------------------------------------------------


def test_a_new_md_with_a_refused_image_creates_nothing_and_fails() -> None:
    doc = md({"serving": {"nodePool": "gpu", "tritonImage": "evil/miner:1"}})
    doc["status"] = {"artifact": {"uri": "pvc://artifacts/x", "sha256": "a" * 64, "specHash": "h"}}
    p = plan(doc, Observed(now=NOW), CONFIG)
    assert p.apply == [] and p.delete == []
    cond = condition(p.status["conditions"], "Progressing")
    assert (cond["status"], cond["reason"]) == ("False", "ImageNotAllowed")
    assert "'evil/miner:1'" in cond["message"] and "tritonserver" in cond["message"]
    assert conditions(p)["Available"] == ("False", "ImageNotAllowed")
    assert p.status["phase"] == "Failed"
    assert ("Warning", "ImageNotAllowed", condition(p.status["conditions"], "Degraded")["message"]) in p.events


def test_an_allowed_image_of_another_tag_is_served() -> None:
    doc = md({"serving": {"nodePool": "gpu", "tritonImage": "tritonserver:25.01-py3"}})
    p = plan(doc, Observed(now=NOW), CONFIG)
    assert kinds(p) == [("Job", job_name(doc))] and "ImageNotAllowed" not in str(p.status)


def test_editing_a_serving_md_to_a_refused_image_keeps_the_old_revision_serving() -> None:
    doc, first = serving_md()
    children = ready_children(first)
    settled = plan(doc, Observed(children=children, now=NOW + 5), CONFIG)
    doc["status"] = {**settled.status, "replicas": 2}
    edited = {**doc, "spec": {**doc["spec"], "serving": {**doc["spec"]["serving"], "tritonImage": "evil/miner:1"}}}
    p = plan(edited, Observed(children=children, now=NOW + 10), CONFIG)
    assert p.apply == [] and p.delete == [], "nothing is created, changed or deleted for a refused spec"
    progressing = condition(p.status["conditions"], "Progressing")
    assert progressing["reason"] == "ImageNotAllowed" and "still serving revision" in progressing["message"]
    assert conditions(p)["Available"] == ("True", "MinimumReplicasReady")
    assert conditions(p)["Degraded"] == ("True", "ImageNotAllowed")
    assert p.status["phase"] == "Degraded" and p.status["readyReplicas"] == 2
    assert "rollout" not in p.status, "the rollout the old revision serves is left as it is"
    # Allowed again: the same children as before, nothing left over from the refusal.
    back = plan({**doc, "status": {**doc["status"], "conditions": p.status["conditions"]}}, Observed(children=children, now=NOW + 15), CONFIG)
    assert all(c.up_to_date for c in back.apply) and back.status["phase"] == "Ready"
    assert conditions(back)["Degraded"] == ("False", "Healthy")


def test_the_configured_allow_list_replaces_the_default() -> None:
    config = OperatorConfig(node_pools={"gpu": NodePool()}, allowed_triton_images=["registry.example/*"])
    ok = md({"serving": {"nodePool": "gpu", "tritonImage": "registry.example/ml/triton:1"}})
    assert plan(ok, Observed(now=NOW), config).apply
    default = md({"serving": {"nodePool": "gpu", "tritonImage": "tritonserver:25.01-py3"}})
    assert plan(default, Observed(now=NOW), config).status["phase"] == "Failed"


# --- ownership in plan() ----------------------------------------------------------------


def stranger(kind: str, name: str, controller: dict[str, str] | None = None) -> dict[str, Any]:
    """An object with a child's name that this MD does not control, as the controller caches it."""
    meta: dict[str, Any] = {"name": name, "uid": f"uid-{name}", "ownerReferences": [controller] if controller else []}
    return st.summarize_child({"kind": kind, "metadata": meta, "spec": {}, "status": {}})


def test_ownership_takes_the_controller_reference_only() -> None:
    refs = [{"kind": "Other", "name": "o", "uid": "u-1"}, {"kind": "ModelDeployment", "name": "m", "uid": "u-2", "controller": True}]
    assert st.ownership({"uid": "me", "ownerReferences": refs}) == {"uid": "me", "owner": "u-2", "controller": "ModelDeployment/m"}
    assert st.ownership({"uid": "me", "ownerReferences": refs[:1]}) == {"uid": "me", "owner": None, "controller": None}


def test_children_with_a_strangers_name_are_conflicts_never_applied() -> None:
    doc, first = serving_md()
    ours = [c for c in ready_children(first) if c["kind"] not in ("Deployment", "Service")]
    theirs = [stranger("Deployment", "digits-cloud-triton"),
              stranger("Service", "digits-cloud-triton", {"kind": "ModelDeployment", "name": "digits-cloud", "uid": "uid-old", "controller": "true"})]
    p = plan(doc, Observed(children=ours + theirs, now=NOW), CONFIG)
    assert {k for k, _ in kinds(p)} == {"PodDisruptionBudget"}, "only the children that are ours (or free) are applied"
    cond = condition(p.status["conditions"], "Progressing")
    assert (cond["status"], cond["reason"]) == ("False", "ChildConflict")
    assert "Deployment digits-cloud-triton already exists, with no controller" in cond["message"]
    assert "Service digits-cloud-triton already exists, controlled by ModelDeployment/digits-cloud" in cond["message"]
    assert conditions(p)["Degraded"] == ("True", "ChildConflict") and p.status["phase"] == "Degraded"
    assert conditions(p)["Available"] == ("False", "ReplicasNotReady"), "a stranger's ready replicas are not ours"
    assert any(e[:2] == ("Warning", "ChildConflict") for e in p.events)


def test_a_child_proven_ours_is_applied_with_its_uid_and_a_new_one_without() -> None:
    doc, first = serving_md()
    children = ready_children(first)
    p = plan(doc, Observed(children=children, now=NOW), CONFIG)
    assert {c.ref: c.uid for c in p.apply} == {f"{c['kind']} {c['name']}": c["uid"] for c in children}
    assert all(c.uid is None for c in first.apply), "nothing cached: create-only"


def test_only_children_we_control_are_deleted_and_by_uid() -> None:
    doc, first = serving_md(serving={"nodePool": "gpu", "replicas": 1})
    ours_canary = {"kind": "Deployment", "name": "digits-cloud-triton-canary", "uid": "c-1", "status": {}, **OURS}
    their_pdb = stranger("PodDisruptionBudget", "digits-cloud-triton")
    p = plan(doc, Observed(children=ready_children(first) + [ours_canary, their_pdb], now=NOW), CONFIG)
    assert [(d.kind, d.name, d.uid) for d in p.delete] == [("Deployment", "digits-cloud-triton-canary", "c-1")]


def test_a_strangers_job_with_the_worker_jobs_name_is_a_conflict_not_followed() -> None:
    doc = md()
    theirs = {"name": job_name(doc), "succeeded": 1, **st.ownership({"uid": "x", "ownerReferences": []})}
    p = plan(doc, Observed(jobs=[theirs], now=NOW), CONFIG)
    assert p.apply == [] and "artifact" not in p.status
    assert conditions(p)["Progressing"] == ("False", "ChildConflict") and p.status["phase"] == "Pending"
    assert f"Job {job_name(doc)} already exists" in condition(p.status["conditions"], "Progressing")["message"]

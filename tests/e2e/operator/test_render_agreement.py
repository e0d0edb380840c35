"""`model-operator render` and the operator produce the same objects for every cluster example.

Each example is created in a namespace; the worker Job the operator creates is compared with
render's, then a published artifact is written into the MD's status (what a finished Job's
report gives) and every serving child the operator creates is compared with render's. Objects
are compared by the desired-hash annotation both carry: the hash of the whole object as applied."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from md_helpers import GROUP, PLURAL, REPO, VERSION, create_md, get_md

from kubetest.wait import wait_for
from model_operator.api.hashing import spec_hash
from model_operator.api.validation import load_spec
from model_operator.config import OperatorConfig
from model_operator.kube.api import DESIRED_HASH, Kube
from model_operator.plan.render import ALL_OPTIONAL, render

pytestmark = [pytest.mark.e2e]

EXAMPLES = [p for p in sorted((REPO / "examples").glob("*/modeldeployment*.yaml"))
            if "://" in yaml.safe_load(p.read_text())["spec"]["model"]["uri"]]
SHA = "e" * 64
# Kinds the operator may create for an MD, as (apiVersion, kind).
CHILD_KINDS = [("batch/v1", "Job"), ("apps/v1", "Deployment"), ("v1", "Service"), ("policy/v1", "PodDisruptionBudget"),
               ("autoscaling/v2", "HorizontalPodAutoscaler"), ("keda.sh/v1alpha1", "ScaledObject"),
               ("monitoring.coreos.com/v1", "ServiceMonitor")]


def _children(kube: Kube, namespace: str, name: str) -> dict[tuple[str, str], str]:
    """(kind, name) -> desired hash of every child in the cluster labelled as the MD's."""
    out = {}
    for api_version, kind in CHILD_KINDS:
        if not kube.has_kind(api_version, kind):
            continue
        for obj in kube.list(api_version, kind, namespace, label_selector=f"serving.model-operator.io/deployment={name}"):
            out[(kind, obj["metadata"]["name"])] = (obj["metadata"].get("annotations") or {}).get(DESIRED_HASH, "")
    return out


def _rendered(objs: list[dict[str, Any]]) -> dict[tuple[str, str], str]:
    return {(o["kind"], o["metadata"]["name"]): o["metadata"]["annotations"][DESIRED_HASH] for o in objs}


@pytest.mark.parametrize("example", EXAMPLES, ids=[f"{p.parent.name}/{p.stem}" for p in EXAMPLES])
def test_render_and_the_operator_create_the_same_objects(example: Path, start_operator: Any, namespace: str, custom_api: Any,
                                                         operator_env: dict[str, str]) -> None:
    config = OperatorConfig.load(operator_env["MODEL_OPERATOR_CONFIG"])
    kube = Kube()
    served = frozenset(api for api in ALL_OPTIONAL if kube.has_kind(*api))
    doc = yaml.safe_load(example.read_text())
    name = doc["metadata"]["name"]
    start_operator()
    md = create_md(custom_api, namespace, doc)

    job, = render(md, config, served=served, sha256=SHA)[:1]
    want_job = _rendered([job])
    got = wait_for(lambda: (c := _children(kube, namespace, name)) and c, timeout=60, message=f"{name}: the worker Job")
    assert got == want_job, f"operator {got} != render {want_job}"

    digest = spec_hash(load_spec(doc["spec"]))
    artifact = {"uri": config.artifact_store.uri_for(namespace, name, digest), "sha256": SHA, "specHash": digest}
    custom_api.patch_namespaced_custom_object_status(GROUP, VERSION, namespace, PLURAL, name, {"status": {"artifact": artifact}})
    want = _rendered(render(get_md(custom_api, namespace, name), config, served=served, sha256=SHA))

    def same() -> bool:
        return _children(kube, namespace, name) == want

    try:
        wait_for(same, timeout=90, message=f"{name}: the serving children")
    except Exception:
        raise AssertionError(f"operator {_children(kube, namespace, name)} != render {want}") from None
    assert len(want) > 1 or doc["spec"].get("target") == "device"

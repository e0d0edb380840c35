"""Multi-tenant safety against the real API server: the operator touches only objects it owns, and
runs only the Triton images its configuration allows.

- A Deployment and a Service that already hold the names of an MD's children (no ownerReference
  to it) stay exactly as they were; the MD says ChildConflict naming both; once they are deleted
  the MD converges to Ready.
- An MD that names a Triton image outside the allow-list gets ImageNotAllowed and no pod; a
  serving MD edited to such an image keeps serving its old revision, unchanged, and says so."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from md_helpers import (
    AS_IS,
    GROUP,
    LOCAL,
    ONNX_MODEL,
    PLURAL,
    VERSION,
    condition,
    create_md,
    digits_md,
    get_md,
    ready_triton_pods,
    wait_phase,
)

from kubetest.wait import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

FORBIDDEN = "registry.example/miner:1"


def _serving_md(name: str, **serving: Any) -> dict[str, Any]:
    return digits_md(name, model=ONNX_MODEL, optimization=AS_IS, serving={**LOCAL, **serving})


def _wait_condition(custom_api: Any, namespace: str, name: str, type_: str, reason: str, *needles: str, timeout: float = 180) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        md = get_md(custom_api, namespace, name)
        cond = condition(md, type_)
        return md if cond.get("reason") == reason and all(n in cond.get("message", "") for n in needles) else None

    try:
        return wait_for(check, timeout=timeout, interval=1, message=f"{name}: {type_} {reason}")
    except Exception:
        raise AssertionError(f"{name}: no {type_} {reason}; status {get_md(custom_api, namespace, name).get('status')}") from None


def _snapshot(obj: Any) -> tuple[Any, ...]:
    meta = obj.metadata
    managers = sorted({m.manager for m in meta.managed_fields or []})
    return meta.uid, meta.resource_version, meta.owner_references, meta.labels, meta.annotations, managers, obj.spec.to_dict()


def _strangers(core_api: Any, apps_api: Any, namespace: str, name: str) -> None:
    """A Deployment (no replicas: nothing to schedule) and a Service of a team that was there first."""
    labels = {"app": "theirs"}
    apps_api.create_namespaced_deployment(namespace, client.V1Deployment(
        metadata=client.V1ObjectMeta(name=name, labels=labels),
        spec=client.V1DeploymentSpec(replicas=0, selector=client.V1LabelSelector(match_labels=labels), template=client.V1PodTemplateSpec(
            metadata=client.V1ObjectMeta(labels=labels),
            spec=client.V1PodSpec(containers=[client.V1Container(name="app", image="theirs:1")])))))
    core_api.create_namespaced_service(namespace, client.V1Service(
        metadata=client.V1ObjectMeta(name=name, labels=labels),
        spec=client.V1ServiceSpec(selector=labels, ports=[client.V1ServicePort(name="web", port=80, target_port=8080)])))
    # The Deployment controller writes its revision and status once; after that only a change by
    # someone else moves the resourceVersion.
    wait_for(lambda: (d := apps_api.read_namespaced_deployment(name, namespace)).status.observed_generation == d.metadata.generation,
             timeout=30, message=f"Deployment {name} observed by its controller")


def test_objects_with_a_childs_name_are_left_alone_until_deleted(
    models: Path, start_operator: Any, namespace: str, custom_api: Any, core_api: Any, apps_api: Any,
) -> None:
    child = "taken-triton"
    _strangers(core_api, apps_api, namespace, child)
    before = (_snapshot(apps_api.read_namespaced_deployment(child, namespace)), _snapshot(core_api.read_namespaced_service(child, namespace)))
    start_operator()
    create_md(custom_api, namespace, _serving_md("taken"))

    md = _wait_condition(custom_api, namespace, "taken", "Progressing", "ChildConflict", f"Deployment {child}", f"Service {child}")
    assert condition(md, "Degraded")["reason"] == "ChildConflict" and md["status"]["phase"] == "Degraded"
    assert condition(md, "ArtifactReady")["status"] == "True", "the artifact was made; only the serving children are held"
    after = (_snapshot(apps_api.read_namespaced_deployment(child, namespace)), _snapshot(core_api.read_namespaced_service(child, namespace)))
    assert after == before, "neither object was changed"
    assert not any("model-operator" in s[5] for s in after), "the operator's field manager never wrote to them"
    events = core_api.list_namespaced_event(namespace, field_selector="involvedObject.name=taken").items
    assert any(e.type == "Warning" and e.reason == "ChildConflict" and child in e.message for e in events)

    apps_api.delete_namespaced_deployment(child, namespace)
    core_api.delete_namespaced_service(child, namespace)
    md = wait_phase(custom_api, namespace, "taken", "Ready", timeout=150)
    dep = apps_api.read_namespaced_deployment(child, namespace)
    assert [(r.kind, r.uid, r.controller) for r in dep.metadata.owner_references or []] == [("ModelDeployment", md["metadata"]["uid"], True)]
    assert core_api.read_namespaced_service(child, namespace).metadata.owner_references[0].uid == md["metadata"]["uid"]


def test_a_refused_image_creates_nothing(start_operator: Any, namespace: str, custom_api: Any, core_api: Any, batch_api: Any) -> None:
    start_operator()
    create_md(custom_api, namespace, _serving_md("refused", tritonImage=FORBIDDEN))
    md = _wait_condition(custom_api, namespace, "refused", "Progressing", "ImageNotAllowed", FORBIDDEN, timeout=60)
    assert md["status"]["phase"] == "Failed"
    assert not batch_api.list_namespaced_job(namespace).items and not core_api.list_namespaced_pod(namespace).items
    events = core_api.list_namespaced_event(namespace, field_selector="involvedObject.name=refused").items
    assert any(e.type == "Warning" and e.reason == "ImageNotAllowed" and FORBIDDEN in e.message for e in events)


def test_editing_a_serving_md_to_a_refused_image_keeps_the_old_revision_serving(
    models: Path, start_operator: Any, namespace: str, custom_api: Any, core_api: Any, apps_api: Any,
) -> None:
    start_operator()
    create_md(custom_api, namespace, _serving_md("edited"))
    wait_phase(custom_api, namespace, "edited", "Ready", timeout=150)
    before = _snapshot(apps_api.read_namespaced_deployment("edited-triton", namespace))
    pods = {p.metadata.uid for p in ready_triton_pods(core_api, namespace, "edited")}

    custom_api.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "edited", {"spec": {"serving": {"tritonImage": FORBIDDEN}}})
    md = _wait_condition(custom_api, namespace, "edited", "Progressing", "ImageNotAllowed", FORBIDDEN, "still serving revision", timeout=60)
    assert md["status"]["phase"] == "Degraded" and condition(md, "Available")["status"] == "True"
    assert md["status"]["observedGeneration"] == md["metadata"]["generation"]
    assert _snapshot(apps_api.read_namespaced_deployment("edited-triton", namespace)) == before, "the Deployment was not changed"
    assert {p.metadata.uid for p in ready_triton_pods(core_api, namespace, "edited")} == pods, "the same pods still serve"

    custom_api.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "edited", {"spec": {"serving": {"tritonImage": None}}})
    md = wait_phase(custom_api, namespace, "edited", "Ready", timeout=60)
    assert condition(md, "Degraded")["status"] == "False"


def test_applies_and_deletes_are_confined_to_the_object_they_name(namespace: str, kube: Any, core_api: Any) -> None:
    """kube.Kube itself: a forced apply carrying a uid, or a delete with a uid precondition, never
    reaches another object of that name; an apply without a uid does not force a field."""
    from kubernetes.client.exceptions import ApiException

    from model_operator.kube.api import Kube

    k = Kube(kube)

    def service(port: int) -> dict[str, Any]:
        return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "svc", "namespace": namespace},
                "spec": {"selector": {"app": "ours"}, "ports": [{"port": port}]}}

    ours = k.apply(service(80))["metadata"]["uid"]
    assert k.apply(service(81), ours)["spec"]["ports"][0]["port"] == 81
    k.delete("v1", "Service", "svc", namespace, uid=ours)
    wait_for(lambda: k.get("v1", "Service", "svc", namespace) is None, timeout=30, message="our Service gone")
    core_api.create_namespaced_service(namespace, client.V1Service(
        metadata=client.V1ObjectMeta(name="svc"), spec=client.V1ServiceSpec(selector={"app": "theirs"}, ports=[client.V1ServicePort(port=90)])))
    before = _snapshot(core_api.read_namespaced_service("svc", namespace))
    for attempt in (lambda: k.apply(service(80), ours), lambda: k.apply(service(80)),
                    lambda: k.delete("v1", "Service", "svc", namespace, uid=ours)):
        with pytest.raises(ApiException) as refused:
            attempt()
        assert refused.value.status in (409, 422), refused.value
    assert _snapshot(core_api.read_namespaced_service("svc", namespace)) == before

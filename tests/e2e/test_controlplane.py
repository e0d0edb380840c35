"""The test control plane itself: what the operator's e2e tests rely on really happens.

Real API server validation (CEL, subresources), real scheduling onto the KWOK
pools, real garbage collection. The real node (kubelet, containers, Services,
logs, Prometheus scraping pods) has its own tests in test_cluster_realnode.py.
"""

from __future__ import annotations

import json
import uuid
from typing import Any, Callable

import pytest
from kubernetes.client.exceptions import ApiException

from kubetest.wait import wait_for

pytestmark = pytest.mark.e2e

GROUP = "test.model-operator.io"
# Test namespaces enforce the `restricted` Pod Security level, so every pod here is restricted too.
RESTRICTED_POD = {"securityContext": {"runAsNonRoot": True, "runAsUser": 1000, "seccompProfile": {"type": "RuntimeDefault"}}}
RESTRICTED_CONTAINER = {"securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}}
GPU_PLACEMENT = {
    "nodeSelector": {"node-pool": "gpu"},
    "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
}

WIDGET_CRD: dict[str, Any] = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": f"widgets.{GROUP}"},
    "spec": {
        "group": GROUP,
        "scope": "Namespaced",
        "names": {"plural": "widgets", "singular": "widget", "kind": "Widget", "shortNames": ["wd"]},
        "versions": [{
            "name": "v1",
            "served": True,
            "storage": True,
            "subresources": {
                "status": {},
                "scale": {"specReplicasPath": ".spec.replicas", "statusReplicasPath": ".status.replicas",
                          "labelSelectorPath": ".status.selector"},
            },
            "schema": {"openAPIV3Schema": {
                "type": "object",
                "properties": {
                    "spec": {
                        "type": "object",
                        "required": ["replicas"],
                        "properties": {
                            "replicas": {"type": "integer", "minimum": 0},
                            "maxReplicas": {"type": "integer", "minimum": 1},
                            "color": {"type": "string", "enum": ["red", "green"]},
                        },
                        "x-kubernetes-validations": [{
                            "rule": "!has(self.maxReplicas) || self.replicas <= self.maxReplicas",
                            "message": "replicas must not exceed maxReplicas",
                            "fieldPath": ".replicas",
                        }],
                    },
                    "status": {"type": "object", "properties": {
                        "replicas": {"type": "integer"}, "selector": {"type": "string"}}},
                },
            }},
        }],
    },
}


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def _pod_on_node(core_api: Any, namespace: str, selector: str) -> list[Any]:
    return core_api.list_namespaced_pod(namespace, label_selector=selector).items


def _deployment(name: str, labels: dict[str, str], pod_spec: dict[str, Any], replicas: int = 1) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": pod_spec},
        },
    }


def _available(apps_api: Any, namespace: str, name: str) -> bool:
    d = apps_api.read_namespaced_deployment(name, namespace)
    conds = {c.type: c.status for c in (d.status.conditions or [])}
    return conds.get("Available") == "True" and (d.status.ready_replicas or 0) == d.spec.replicas


@pytest.fixture(scope="module")
def widget_crd(apiext_api: Any, kubectl: Callable[..., Any]) -> Any:
    try:
        apiext_api.create_custom_resource_definition(WIDGET_CRD)
    except ApiException as e:
        if e.status != 409:
            raise
    kubectl("wait", "--for=condition=Established", "--timeout=30s", f"crd/widgets.{GROUP}")
    yield WIDGET_CRD
    apiext_api.delete_custom_resource_definition(f"widgets.{GROUP}")


def test_nodes_of_every_pool_are_ready(kubectl: Callable[..., Any]) -> None:
    nodes = json.loads(kubectl("get", "nodes", "-o", "json").stdout)["items"]
    by_pool: dict[str, list[dict[str, Any]]] = {}
    for n in nodes:
        by_pool.setdefault(n["metadata"]["labels"].get("node-pool", ""), []).append(n)
    assert {"gpu", "edge", "cpu", "local"} <= set(by_pool)
    for pool_nodes in by_pool.values():
        for n in pool_nodes:
            ready = [c for c in n["status"]["conditions"] if c["type"] == "Ready"]
            assert ready and ready[0]["status"] == "True", n["metadata"]["name"]
    gpu = by_pool["gpu"][0]
    assert gpu["status"]["allocatable"]["nvidia.com/gpu"] == "4"
    assert gpu["metadata"]["labels"]["nvidia.com/gpu.product"] == "NVIDIA-H100-80GB-HBM3"
    assert {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"} in gpu["spec"]["taints"]
    edge = by_pool["edge"][0]
    assert edge["metadata"]["labels"]["kubernetes.io/arch"] == "arm64"
    assert "node-role.kubernetes.io/edge" in edge["metadata"]["labels"]
    assert any(t["key"] == "edge" for t in edge["spec"]["taints"])


def test_crd_cel_rule_rejects_with_field_path(widget_crd: Any, custom_api: Any, namespace: str) -> None:
    good = {"apiVersion": f"{GROUP}/v1", "kind": "Widget", "metadata": {"name": "ok"},
            "spec": {"replicas": 1, "maxReplicas": 3}}
    custom_api.create_namespaced_custom_object(GROUP, "v1", namespace, "widgets", good)

    bad = {**good, "metadata": {"name": "too-many"}, "spec": {"replicas": 5, "maxReplicas": 3}}
    with pytest.raises(ApiException) as err:
        custom_api.create_namespaced_custom_object(GROUP, "v1", namespace, "widgets", bad)
    assert err.value.status == 422
    body = json.loads(err.value.body)
    assert "replicas must not exceed maxReplicas" in body["message"]
    assert "spec.replicas" in [c.get("field") for c in body["details"]["causes"]]

    wrong_enum = {**good, "metadata": {"name": "blue"}, "spec": {"replicas": 1, "color": "blue"}}
    with pytest.raises(ApiException) as err:
        custom_api.create_namespaced_custom_object(GROUP, "v1", namespace, "widgets", wrong_enum)
    assert err.value.status == 422 and "spec.color" in json.loads(err.value.body)["message"]


def test_status_and_scale_subresources(widget_crd: Any, custom_api: Any, namespace: str,
                                       kubectl: Callable[..., Any]) -> None:
    w = {"apiVersion": f"{GROUP}/v1", "kind": "Widget", "metadata": {"name": "scaled"}, "spec": {"replicas": 1}}
    custom_api.create_namespaced_custom_object(GROUP, "v1", namespace, "widgets", w)
    # With a status subresource, status written through the main resource is dropped ...
    custom_api.patch_namespaced_custom_object(GROUP, "v1", namespace, "widgets", "scaled",
                                              {"status": {"replicas": 9}})
    got = custom_api.get_namespaced_custom_object(GROUP, "v1", namespace, "widgets", "scaled")
    assert "status" not in got or got["status"].get("replicas") != 9
    # ... and only /status changes it.
    custom_api.patch_namespaced_custom_object_status(GROUP, "v1", namespace, "widgets", "scaled",
                                                     {"status": {"replicas": 1, "selector": "app=scaled"}})

    kubectl("scale", "-n", namespace, f"widgets.{GROUP}/scaled", "--replicas=4")
    got = custom_api.get_namespaced_custom_object(GROUP, "v1", namespace, "widgets", "scaled")
    assert got["spec"]["replicas"] == 4
    scale = custom_api.get_namespaced_custom_object_scale(GROUP, "v1", namespace, "widgets", "scaled")
    assert scale["spec"]["replicas"] == 4
    assert scale["status"] == {"replicas": 1, "selector": "app=scaled"}


def test_gpu_deployment_lands_on_gpu_pool_and_becomes_available(apps_api: Any, core_api: Any, namespace: str) -> None:
    labels = {"app": "gpu-infer"}
    spec = {**GPU_PLACEMENT, **RESTRICTED_POD, "containers": [{
        "name": "server", "image": "tritonserver:24.08-py3", **RESTRICTED_CONTAINER,
        "resources": {"limits": {"nvidia.com/gpu": 1, "cpu": "1", "memory": "1Gi"}},
    }]}
    apps_api.create_namespaced_deployment(namespace, _deployment("gpu-infer", labels, spec, replicas=2))
    wait_for(lambda: _available(apps_api, namespace, "gpu-infer"), timeout=60, message="gpu-infer Available")
    pods = _pod_on_node(core_api, namespace, "app=gpu-infer")
    assert len(pods) == 2
    for p in pods:
        assert p.spec.node_name.startswith("gpu-"), p.spec.node_name
        assert p.status.phase == "Running"


def test_pod_asking_for_16_gpus_stays_pending_unschedulable(core_api: Any, namespace: str) -> None:
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "greedy"},
           "spec": {**GPU_PLACEMENT, **RESTRICTED_POD, "containers": [{
               "name": "c", "image": "tritonserver:24.08-py3", **RESTRICTED_CONTAINER,
               "resources": {"limits": {"nvidia.com/gpu": 16}}}]}}
    core_api.create_namespaced_pod(namespace, pod)

    def unschedulable() -> Any:
        p = core_api.read_namespaced_pod("greedy", namespace)
        for c in p.status.conditions or []:
            if c.type == "PodScheduled" and c.status == "False" and c.reason == "Unschedulable":
                return p, c
        return None

    p, cond = wait_for(unschedulable, timeout=30, message="PodScheduled=False/Unschedulable")
    assert p.status.phase == "Pending" and not p.spec.node_name
    assert "nvidia.com/gpu" in cond.message, cond.message


def test_garbage_collector_deletes_owned_deployment(apps_api: Any, core_api: Any, namespace: str) -> None:
    owner = core_api.create_namespaced_config_map(
        namespace, {"metadata": {"name": "owner"}, "data": {"k": "v"}})
    dep = _deployment("owned", {"app": "owned"}, {**RESTRICTED_POD, "containers": [{"name": "c", "image": "busybox", **RESTRICTED_CONTAINER}]})
    dep["metadata"]["ownerReferences"] = [{"apiVersion": "v1", "kind": "ConfigMap", "name": "owner",
                                           "uid": owner.metadata.uid, "blockOwnerDeletion": True}]
    apps_api.create_namespaced_deployment(namespace, dep)
    wait_for(lambda: _available(apps_api, namespace, "owned"), timeout=60, message="owned Available")
    assert apps_api.list_namespaced_replica_set(namespace, label_selector="app=owned").items

    core_api.delete_namespaced_config_map("owner", namespace, propagation_policy="Foreground")

    def gone() -> bool:
        try:
            apps_api.read_namespaced_deployment("owned", namespace)
            return False
        except ApiException as e:
            return e.status == 404

    wait_for(gone, timeout=60, message="Deployment owned garbage-collected")
    wait_for(lambda: not apps_api.list_namespaced_replica_set(namespace, label_selector="app=owned").items,
             timeout=60, message="ReplicaSets of owned garbage-collected")

"""The local pod runner behaves like a kubelet where the operator can tell the difference."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from kubetest import binaries
from kubernetes.client.exceptions import ApiException

from kubetest.wait import wait_for

pytestmark = pytest.mark.e2e

LOCAL_PLACEMENT = {
    "nodeSelector": {"model-operator.io/local-runner": "true"},
    "tolerations": [{"key": "model-operator.io/local", "operator": "Exists", "effect": "NoSchedule"}],
}


def _pod(name: str, containers: list[dict[str, Any]], **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {**LOCAL_PLACEMENT, "containers": containers, **spec}}


def _phase(core_api: Any, namespace: str, name: str, *phases: str) -> Any:
    p = core_api.read_namespaced_pod(name, namespace)
    return p if p.status.phase in phases else None


def test_env_and_volumes_from_configmap_secret_downward_api(core_api: Any, namespace: str) -> None:
    core_api.create_namespaced_config_map(namespace, {"metadata": {"name": "cfg"},
                                                      "data": {"mode": "fast", "app.conf": "threads=4\n"}})
    core_api.create_namespaced_secret(namespace, {"metadata": {"name": "creds"},
                                                  "data": {"token": base64.b64encode(b"s3cr3t").decode()}})
    script = (
        "import os, json\n"
        "out = {k: os.environ.get(k) for k in ('MODE', 'TOKEN', 'NS', 'LABEL', 'CFG_mode', 'CPU_MILLIS')}\n"
        "out['conf'] = open('/etc/app/app.conf').read()\n"
        "out['secret'] = open('/secrets/token').read()\n"
        "out['labels'] = open('/podinfo/labels').read()\n"
        "out['sa'] = sorted(os.listdir('/var/run/secrets/kubernetes.io/serviceaccount'))\n"
        "out['ro'] = not os.access('/etc/app', os.W_OK)\n"
        "open('/dev/termination-log', 'w').write(json.dumps(out))\n"
    )
    pod = _pod("env", [{
        "name": "c", "image": "python", "command": ["python", "-c", script],
        "envFrom": [{"configMapRef": {"name": "cfg"}, "prefix": "CFG_"}],
        "env": [
            {"name": "MODE", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "mode"}}},
            {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "token"}}},
            {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            {"name": "LABEL", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['tier']"}}},
            {"name": "CPU_MILLIS", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu", "divisor": "1m"}}},
        ],
        "resources": {"limits": {"cpu": "1500m"}},
        "volumeMounts": [
            {"name": "cfg", "mountPath": "/etc/app", "readOnly": True},
            {"name": "creds", "mountPath": "/secrets"},
            {"name": "podinfo", "mountPath": "/podinfo"},
        ],
    }], restartPolicy="Never", volumes=[
        {"name": "cfg", "configMap": {"name": "cfg"}},
        {"name": "creds", "secret": {"secretName": "creds"}},
        {"name": "podinfo", "downwardAPI": {"items": [{"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}}]}},
    ])
    pod["metadata"]["labels"] = {"tier": "backend"}
    core_api.create_namespaced_pod(namespace, pod)
    p = wait_for(lambda: _phase(core_api, namespace, "env", "Succeeded", "Failed"), timeout=30, message="pod env done")
    term = p.status.container_statuses[0].state.terminated
    assert p.status.phase == "Succeeded", term
    out = json.loads(term.message)
    assert out["MODE"] == "fast" and out["CFG_mode"] == "fast"
    assert out["TOKEN"] == "s3cr3t" and out["secret"] == "s3cr3t"
    assert out["NS"] == namespace and out["LABEL"] == "backend"
    assert out["CPU_MILLIS"] == "1500"
    assert out["conf"] == "threads=4\n"
    assert 'tier="backend"' in out["labels"]
    assert out["sa"] == ["ca.crt", "namespace", "token"]
    assert out["ro"] is True


def test_in_cluster_config_reaches_the_api_server(core_api: Any, namespace: str) -> None:
    script = (
        "from kubernetes import client, config\n"
        "config.load_incluster_config()\n"
        "v = client.VersionApi().get_code()\n"
        "open('/dev/termination-log', 'w').write(v.git_version)\n"
    )
    core_api.create_namespaced_pod(namespace, _pod("incluster", [
        {"name": "c", "image": "python", "command": ["python", "-c", script]}], restartPolicy="Never"))
    p = wait_for(lambda: _phase(core_api, namespace, "incluster", "Succeeded", "Failed"), timeout=30,
                 message="pod incluster done")
    term = p.status.container_statuses[0].state.terminated
    assert p.status.phase == "Succeeded", term
    assert term.message.startswith("v1.")


def test_init_containers_run_first_and_share_volumes(core_api: Any, namespace: str) -> None:
    pod = _pod("init", [{"name": "main", "image": "python", "command": ["python", "-c"],
                         "args": ["open('/dev/termination-log','w').write(open('/shared/x').read())"],
                         "volumeMounts": [{"name": "shared", "mountPath": "/shared"}]}],
               restartPolicy="Never",
               initContainers=[{"name": "prep", "image": "python", "command": ["python", "-c"],
                                "args": ["open('/shared/x','w').write('prepared')"],
                                "volumeMounts": [{"name": "shared", "mountPath": "/shared"}]}],
               volumes=[{"name": "shared", "emptyDir": {}}])
    core_api.create_namespaced_pod(namespace, pod)
    p = wait_for(lambda: _phase(core_api, namespace, "init", "Succeeded", "Failed"), timeout=30, message="pod init done")
    assert p.status.phase == "Succeeded"
    assert p.status.init_container_statuses[0].state.terminated.reason == "Completed"
    assert p.status.container_statuses[0].state.terminated.message == "prepared"
    conds = {c.type: c.status for c in p.status.conditions}
    assert conds["Initialized"] == "True"


def test_on_failure_restarts_until_success(core_api: Any, namespace: str) -> None:
    # Fails on the first run, succeeds on the second: the emptyDir outlives restarts.
    script = ("import os, sys\n"
              "if not os.path.exists('/state/ran'):\n"
              "    open('/state/ran', 'w').close(); sys.exit(7)\n")
    pod = _pod("retry", [{"name": "c", "image": "python", "command": ["python", "-c", script],
                          "volumeMounts": [{"name": "state", "mountPath": "/state"}]}],
               restartPolicy="OnFailure", volumes=[{"name": "state", "emptyDir": {}}])
    core_api.create_namespaced_pod(namespace, pod)
    p = wait_for(lambda: _phase(core_api, namespace, "retry", "Succeeded", "Failed"), timeout=30, message="pod retry done")
    cs = p.status.container_statuses[0]
    assert p.status.phase == "Succeeded"
    assert cs.restart_count == 1
    assert cs.last_state.terminated.exit_code == 7


def test_failed_liveness_probe_restarts_the_container(core_api: Any, namespace: str) -> None:
    pod = _pod("unhealthy", [{
        "name": "c", "image": "python", "command": ["python", "-c", "import time; time.sleep(600)"],
        "livenessProbe": {"tcpSocket": {"port": 9999}, "periodSeconds": 1, "failureThreshold": 2},
    }], terminationGracePeriodSeconds=2)
    core_api.create_namespaced_pod(namespace, pod)

    def restarted() -> Any:
        p = core_api.read_namespaced_pod("unhealthy", namespace)
        cs = (p.status.container_statuses or [None])[0]
        return cs if cs and cs.restart_count >= 1 else None

    cs = wait_for(restarted, timeout=30, message="restartCount >= 1")
    assert cs.last_state.terminated.exit_code in (137, 143)
    events = core_api.list_namespaced_event(namespace, field_selector="involvedObject.name=unhealthy").items
    assert any(e.reason == "Unhealthy" and "Liveness" in e.message for e in events)


def test_missing_executable_is_a_start_error(core_api: Any, namespace: str) -> None:
    core_api.create_namespaced_pod(namespace, _pod("nocmd", [
        {"name": "c", "image": "python", "command": ["no-such-program-here"]}], restartPolicy="Never"))
    p = wait_for(lambda: _phase(core_api, namespace, "nocmd", "Failed"), timeout=30, message="pod nocmd Failed")
    term = p.status.container_statuses[0].state.terminated
    assert term.reason == "StartError" and "no-such-program-here" in term.message


def test_persistent_volume_claim_is_provisioned_and_mounted(core_api: Any, namespace: str) -> None:
    core_api.create_namespaced_persistent_volume_claim(namespace, {
        "metadata": {"name": "models"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
    })
    writer = _pod("writer", [{"name": "c", "image": "python", "command": ["python", "-c"],
                              "args": ["open('/models/m.txt','w').write('weights')"],
                              "volumeMounts": [{"name": "m", "mountPath": "/models"}]}],
                  restartPolicy="Never", volumes=[{"name": "m", "persistentVolumeClaim": {"claimName": "models"}}])
    core_api.create_namespaced_pod(namespace, writer)
    wait_for(lambda: _phase(core_api, namespace, "writer", "Succeeded"), timeout=30, message="writer Succeeded")
    reader = _pod("reader", [{"name": "c", "image": "python", "command": ["python", "-c"],
                              "args": ["open('/dev/termination-log','w').write(open('/data/m.txt').read())"],
                              "volumeMounts": [{"name": "m", "mountPath": "/data"}]}],
                  restartPolicy="Never", volumes=[{"name": "m", "persistentVolumeClaim": {"claimName": "models"}}])
    core_api.create_namespaced_pod(namespace, reader)
    p = wait_for(lambda: _phase(core_api, namespace, "reader", "Succeeded", "Failed"), timeout=30, message="reader done")
    assert p.status.container_statuses[0].state.terminated.message == "weights"
    pvc = core_api.read_namespaced_persistent_volume_claim("models", namespace)
    assert pvc.status.phase == "Bound" and pvc.spec.storage_class_name == "local"


def test_pods_without_local_toleration_stay_off_the_local_node(core_api: Any, namespace: str) -> None:
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "anywhere"},
           "spec": {"containers": [{"name": "c", "image": "busybox"}]}}
    core_api.create_namespaced_pod(namespace, pod)
    p = wait_for(lambda: _phase(core_api, namespace, "anywhere", "Running"), timeout=30, message="anywhere Running")
    assert p.spec.node_name.startswith("cpu-")
    try:
        core_api.delete_namespaced_pod("anywhere", namespace, grace_period_seconds=0)
    except ApiException:
        pass


def test_two_triton_pods_serve_on_their_own_pod_ips(apps_api: Any, core_api: Any, namespace: str) -> None:
    """The Triton image maps to the wheel's tritonserver; the bind shim keeps replicas apart."""
    import importlib.util
    import socket
    import urllib.request

    if importlib.util.find_spec("pytriton") is None:
        binaries.unavailable("nvidia-pytriton is not installed (pip install -e .[triton])")
    labels = {"app": "triton"}
    dep = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "triton"}, "spec": {
        "replicas": 2, "selector": {"matchLabels": labels},
        "template": {"metadata": {"labels": labels}, "spec": {
            **LOCAL_PLACEMENT,
            "volumes": [{"name": "models", "emptyDir": {}}],
            "containers": [{
                "name": "triton", "image": "nvcr.io/nvidia/tritonserver:24.08-py3",
                "command": ["tritonserver"], "args": ["--model-repository=/models"],
                "ports": [{"containerPort": 8000, "name": "http"}, {"containerPort": 8001, "name": "grpc"},
                          {"containerPort": 8002, "name": "metrics"}],
                "volumeMounts": [{"name": "models", "mountPath": "/models"}],
                "readinessProbe": {"httpGet": {"path": "/v2/health/ready", "port": "http"}, "periodSeconds": 1},
                "livenessProbe": {"tcpSocket": {"port": "grpc"}, "periodSeconds": 2},
            }],
        }},
    }}
    apps_api.create_namespaced_deployment(namespace, dep)

    def available() -> bool:
        d = apps_api.read_namespaced_deployment("triton", namespace)
        return (d.status.ready_replicas or 0) == 2

    wait_for(available, timeout=90, message="two Triton replicas ready")
    pods = core_api.list_namespaced_pod(namespace, label_selector="app=triton").items
    ips = {p.status.pod_ip for p in pods}
    assert len(ips) == 2
    for ip in ips:
        with urllib.request.urlopen(f"http://{ip}:8000/v2/health/live", timeout=3) as r:
            assert r.status == 200
        with urllib.request.urlopen(f"http://{ip}:8002/metrics", timeout=3) as r:
            assert b"nv_" in r.read()
        socket.create_connection((ip, 8001), timeout=3).close()

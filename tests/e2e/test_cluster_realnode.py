"""The real node (``Cluster(real_node=True)``): a kubelet with containerd, runc, CNI and
kube-proxy enforces what the pod runner ignores.

This module starts its own cluster (``realnode`` fixture: no KWOK pools, only the real node
``local-0``), separate from the session's ``cluster`` fixture, and stops it at the end; its
last test stops and restarts it, kills one and checks that the next start clears what it left
and that nothing is left on the host. Only one real node fits on a machine, and the session's
``cluster`` is a real node too, so tests/e2e/conftest.py runs this module first, before anything
starts the session cluster. With ``$MODEL_OPERATOR_E2E_CLUSTER`` (a developer's running cluster)
the module uses that cluster instead, and the last test checks that a second real node is
refused (the stop/restart checks then need a run without it).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from kubetest import binaries, node, procs
from kubetest.cluster import Cluster
from kubetest.rest import ApiError
from kubetest.wait import wait_for

pytestmark = pytest.mark.e2e

LOCAL_PLACEMENT = {
    "nodeSelector": {"model-operator.io/local-runner": "true"},
    "tolerations": [{"key": "model-operator.io/local", "operator": "Exists", "effect": "NoSchedule"}],
}
RESTRICTED_SC = {
    "runAsNonRoot": True, "runAsUser": 1000, "runAsGroup": 1000, "readOnlyRootFilesystem": True,
    "allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"},
}


def _host_state() -> dict[str, Any]:
    """What a real node changes on the host, to compare before and after."""
    chains = []
    for table in ("filter", "nat", "mangle"):
        out = subprocess.run(["iptables-save", "-t", table], capture_output=True, text=True).stdout
        chains += [f"{table}/{line[1:].split()[0]}" for line in out.splitlines()
                   if line.startswith(":") and line[1:].startswith(node.CHAIN_PREFIXES)]
    addrs = subprocess.run(["ip", "-o", "addr", "show", "dev", "lo"], capture_output=True, text=True).stdout
    return {
        "chains": sorted(chains),
        "bridge": Path(f"/sys/class/net/{node.BRIDGE}").exists(),
        "node_ip": f"{node.NODE_IP}/32" in addrs,
        "ip_forward": Path("/proc/sys/net/ipv4/ip_forward").read_text().strip(),
        "cgroups": any((m / node.CGROUP_ROOT).exists() for m in node._cgroup_mounts()),
        "shims": len(node._shim_pids(str(node.node_dir() / "run" / "containerd.sock"))),
    }


@pytest.fixture(scope="module")
def host_before() -> dict[str, Any]:
    return _host_state()


def _shared() -> bool:
    return bool(os.environ.get("MODEL_OPERATOR_E2E_CLUSTER"))


@pytest.fixture(scope="module")
def realnode(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
             host_before: dict[str, Any]) -> Iterator[Cluster]:
    if _shared():
        yield request.getfixturevalue("cluster")
        return
    try:
        binaries.require([*binaries.CLUSTER_BINARIES, *binaries.NODE_BINARIES])
        binaries.require_node_tools()
    except binaries.BinariesMissing as e:
        binaries.unavailable(str(e))
    c = Cluster(tmp_path_factory.mktemp("realnode"), pools=(), real_node=True, startup_timeout=180)
    c.start()
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture
def ns(realnode: Cluster) -> Iterator[str]:
    name = f"rn-{uuid.uuid4().hex[:8]}"
    realnode.kube.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {
        "name": name, "labels": {"pod-security.kubernetes.io/enforce": "restricted"}}})
    wait_for(lambda: realnode.kube.get(f"/api/v1/namespaces/{name}/serviceaccounts/default"), timeout=30,
             message=f"ServiceAccount {name}/default", ignore=(ApiError,))
    yield name
    try:
        realnode.kube.delete(f"/api/v1/namespaces/{name}")
    except ApiError:
        pass


def _pod(c: Cluster, name: str, command: list[str], sc: dict[str, Any] | None = None, image: str | None = None,
         **spec: Any) -> dict[str, Any]:
    container = {"name": "c", "image": image or c.images["busybox"], "command": command,
                 "securityContext": sc if sc is not None else RESTRICTED_SC, **spec.pop("container", {})}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, **spec.pop("metadata", {})},
            "spec": {**LOCAL_PLACEMENT, "restartPolicy": "Never", "containers": [container], **spec}}


def _create(c: Cluster, ns: str, obj: dict[str, Any]) -> dict[str, Any]:
    return c.kube.create(f"/api/v1/namespaces/{ns}/pods", obj)


def _get(c: Cluster, ns: str, name: str) -> dict[str, Any]:
    return c.kube.get(f"/api/v1/namespaces/{ns}/pods/{name}")


def _phase(c: Cluster, ns: str, name: str, *phases: str, timeout: float = 90) -> dict[str, Any]:
    def check() -> Any:
        p = _get(c, ns, name)
        return p if p.get("status", {}).get("phase") in phases else None

    return wait_for(check, timeout=timeout, interval=0.5, message=f"pod {ns}/{name} in {phases}")


def _ready(c: Cluster, ns: str, name: str, timeout: float = 90) -> dict[str, Any]:
    def check() -> Any:
        p = _get(c, ns, name)
        conds = {x["type"]: x["status"] for x in p.get("status", {}).get("conditions", [])}
        return p if conds.get("Ready") == "True" else None

    return wait_for(check, timeout=timeout, interval=0.5, message=f"pod {ns}/{name} Ready")


def test_node_is_real_and_placed_like_the_pod_runner(realnode: Cluster) -> None:
    n = realnode.kube.get("/api/v1/nodes/local-0")
    assert n["metadata"]["labels"]["node-pool"] == "local"
    assert n["metadata"]["labels"]["model-operator.io/local-runner"] == "true"
    assert node.LOCAL_TAINT in [{k: t.get(k) for k in ("key", "value", "effect")} for t in n["spec"]["taints"]]
    assert n["status"]["nodeInfo"]["kubeletVersion"] == "v1.34.4"
    assert n["status"]["nodeInfo"]["containerRuntimeVersion"].startswith("containerd://")
    assert {"type": "InternalIP", "address": node.NODE_IP} in n["status"]["addresses"]
    svc = realnode.kube.get("/api/v1/namespaces/default/services/kubernetes")
    assert svc["spec"]["clusterIP"] == "198.19.0.1"
    def endpoint() -> Any:
        eps = realnode.kube.get("/api/v1/namespaces/default/endpoints/kubernetes")
        return [a["ip"] for s in eps.get("subsets") or [] for a in s.get("addresses", [])]

    assert wait_for(endpoint, timeout=30, message="endpoints of the kubernetes Service") == [node.NODE_IP]


def test_privileged_pod_is_refused_under_restricted(realnode: Cluster, ns: str) -> None:
    with pytest.raises(ApiError) as err:
        _create(realnode, ns, _pod(realnode, "priv", ["sleep", "1"], sc={"privileged": True}))
    assert err.value.status == 403
    assert "violates PodSecurity" in err.value.message


def test_restricted_pod_runs_as_1000_with_a_read_only_root_and_logs(realnode: Cluster, ns: str) -> None:
    script = "id -u; if touch /probe 2>/dev/null; then echo root-writable; else echo root-read-only; fi"
    _create(realnode, ns, _pod(realnode, "restricted", ["sh", "-c", script]))
    pod = _phase(realnode, ns, "restricted", "Succeeded", "Failed")
    assert pod["status"]["phase"] == "Succeeded", pod["status"]
    logs = realnode.kubectl("logs", "-n", ns, "restricted").stdout.split()
    assert logs == ["1000", "root-read-only"]


def test_kubectl_exec(realnode: Cluster, ns: str) -> None:
    _create(realnode, ns, _pod(realnode, "sleeper", ["sleep", "3600"], terminationGracePeriodSeconds=1))
    _ready(realnode, ns, "sleeper")
    out = realnode.kubectl("exec", "-n", ns, "sleeper", "--", "sh", "-c", "echo hello-from-$(hostname); id -u").stdout
    assert out.split() == ["hello-from-sleeper", "1000"]


def test_memory_limit_is_enforced_as_oomkilled_with_restarts(realnode: Cluster, ns: str) -> None:
    pod = _pod(realnode, "hog", ["sh", "-c", "exec dd if=/dev/zero of=/dev/null bs=64M count=1"],
               restartPolicy="Always",
               container={"resources": {"limits": {"memory": "20Mi", "cpu": "200m"}}})
    _create(realnode, ns, pod)

    def oom_restarted() -> Any:
        st = (_get(realnode, ns, "hog").get("status", {}).get("containerStatuses") or [{}])[0]
        last = st.get("lastState", {}).get("terminated") or {}
        return st if last.get("reason") == "OOMKilled" and st.get("restartCount", 0) >= 1 else None

    st = wait_for(oom_restarted, timeout=120, interval=1, message="OOMKilled and restarted")
    assert st["lastState"]["terminated"]["exitCode"] == 137


def test_pvc_is_writable_as_uid_1000(realnode: Cluster, ns: str) -> None:
    realnode.kube.create(f"/api/v1/namespaces/{ns}/persistentvolumeclaims", {
        "apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "data"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}})
    pod = _pod(realnode, "writer", ["sh", "-c", "echo written-by-$(id -u) > /data/f && cat /data/f"],
               container={"volumeMounts": [{"name": "d", "mountPath": "/data"}]},
               volumes=[{"name": "d", "persistentVolumeClaim": {"claimName": "data"}}])
    _create(realnode, ns, pod)
    done = _phase(realnode, ns, "writer", "Succeeded", "Failed")
    assert done["status"]["phase"] == "Succeeded", done["status"]
    on_host = realnode.state_dir / "pvc" / ns / "data" / "f"
    assert on_host.read_text().strip() == "written-by-1000"
    assert on_host.stat().st_uid == 1000


def _web(c: Cluster, ns: str, name: str, body: str, path: str = "index.html", labels: dict | None = None,
         annotations: dict | None = None) -> None:
    script = f"mkdir -p /tmp/www && printf '{body}' > /tmp/www/{path} && exec httpd -f -p 8080 -h /tmp/www"
    pod = _pod(c, name, ["sh", "-c", script],
               metadata={"labels": labels or {"app": name}, "annotations": annotations or {}},
               container={"ports": [{"containerPort": 8080}],
                          "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
                          "readinessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1}},
               volumes=[{"name": "tmp", "emptyDir": {}}], terminationGracePeriodSeconds=1)
    _create(c, ns, pod)
    _ready(c, ns, name)


def test_service_cluster_ip_answers_from_the_host_and_from_pods(realnode: Cluster, ns: str) -> None:
    _web(realnode, ns, "web", "hello-through-the-service\\n")
    svc = realnode.kube.create(f"/api/v1/namespaces/{ns}/services", {
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]}})
    ip = svc["spec"]["clusterIP"]
    assert ip.startswith("198.19."), ip

    def fetch() -> str:
        with urllib.request.urlopen(f"http://{ip}/", timeout=2) as r:
            return r.read().decode()

    assert "hello-through-the-service" in wait_for(fetch, timeout=60, interval=0.5, ignore=(OSError,),
                                                   message=f"GET http://{ip}/ from the host")
    # From a pod: the same Service, and the API server through the kubernetes Service.
    # (busybox-static's wget crashes without NSS modules in the image; nc does plain TCP.)
    script = (f"printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 5 {ip} 80 && "
              "nc -w 5 $KUBERNETES_SERVICE_HOST $KUBERNETES_SERVICE_PORT -e true && echo api-reachable")
    _create(realnode, ns, _pod(realnode, "client", ["sh", "-c", script]))
    done = _phase(realnode, ns, "client", "Succeeded", "Failed")
    logs = realnode.kubectl("logs", "-n", ns, "client").stdout
    assert done["status"]["phase"] == "Succeeded", logs
    assert "hello-through-the-service" in logs and "api-reachable" in logs


def test_host_prometheus_scrapes_a_pod(realnode: Cluster, ns: str) -> None:
    try:
        binaries.prometheus_binary()
    except binaries.BinariesMissing as e:
        binaries.unavailable(str(e))
    prom = realnode.start_prometheus(scrape_interval="1s")
    _web(realnode, ns, "exporter", "mo_realnode_probe 42\\n", path="metrics",
         annotations={"prometheus.io/scrape": "true", "prometheus.io/port": "8080"})
    series = wait_for(lambda: prom.query(f'mo_realnode_probe{{namespace="{ns}"}}'), timeout=60, interval=1,
                      message="mo_realnode_probe scraped from the pod")
    assert series[0]["metric"]["pod"] == "exporter"
    assert float(series[0]["value"][1]) == 42.0


def test_pull_from_a_plain_http_registry(realnode: Cluster, ns: str, tmp_path: Path) -> None:
    registry = shutil.which("docker-registry")
    if registry is None:
        binaries.unavailable("docker-registry missing (Debian package docker-registry; hack/install.sh)")
    port = procs.free_port()
    host = f"127.0.0.1:{port}"
    cfg = tmp_path / "registry.yml"
    cfg.write_text(yaml.safe_dump({
        "version": 0.1, "log": {"level": "warn"},
        "storage": {"filesystem": {"rootdirectory": str(tmp_path / "data")}},
        "http": {"addr": host},
    }))
    reg = procs.spawn([registry, "serve", str(cfg)], tmp_path / "registry.log")
    try:
        wait_for(lambda: urllib.request.urlopen(f"http://{host}/v2/", timeout=2).status == 200, timeout=30,
                 ignore=(OSError,), message="registry /v2/")
        ctr = ["ctr", "--address", str(node.node_dir() / "run" / "containerd.sock"), "-n", "k8s.io"]
        remote = f"{host}/e2e/busybox:pushed"
        subprocess.run([*ctr, "images", "tag", "--force", realnode.images["busybox"], remote], check=True,
                       capture_output=True)
        subprocess.run([*ctr, "images", "push", "--plain-http", remote], check=True, capture_output=True, timeout=120)
        subprocess.run([*ctr, "images", "rm", "--sync", remote], check=True, capture_output=True)
        realnode.add_registry(host, f"http://{host}")
        pod = _pod(realnode, "pulled", ["sh", "-c", "echo pulled-ok"], image=remote,
                   container={"imagePullPolicy": "Always"})
        _create(realnode, ns, pod)
        done = _phase(realnode, ns, "pulled", "Succeeded", "Failed", timeout=120)
        assert done["status"]["phase"] == "Succeeded", done["status"]
        assert realnode.kubectl("logs", "-n", ns, "pulled").stdout.strip() == "pulled-ok"
        events = realnode.kube.get(f"/api/v1/namespaces/{ns}/events")["items"]
        assert any(e["reason"] == "Pulled" and remote in e["message"] for e in events)
    finally:
        procs.stop_group(reg.pid, grace=5, proc=reg)


def test_stop_cleans_the_host_and_a_killed_node_is_cleared_at_the_next_start(
        realnode: Cluster, host_before: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> None:
    assert _host_state()["bridge"] and _host_state()["node_ip"]
    if _shared():  # the session's real node must keep running: a second one is refused
        with pytest.raises(node.NodeError, match="already runs"):
            Cluster(tmp_path_factory.mktemp("realnode-second"), pools=(), real_node=True).start()
        assert realnode.kube.get("/api/v1/nodes/local-0")
        return
    t0 = time.monotonic()
    realnode.stop()
    stop_seconds = time.monotonic() - t0
    assert _host_state() == host_before
    assert not node.read_record()

    # Start again; then kill every process as a killed test session would leave them ...
    again = Cluster(tmp_path_factory.mktemp("realnode-again"), pools=(), real_node=True, startup_timeout=180)
    again.start()
    try:
        assert wait_for(lambda: again.kube.get("/api/v1/nodes/local-0"), timeout=30)
        pids = json.loads((again.state_dir / "cluster.json").read_text())["pids"]
        _create(again, "default", _pod(again, "survivor", ["sleep", "3600"], sc={}))
        _ready(again, "default", "survivor")
        for pid in pids.values():
            try:
                os.killpg(pid, 9)
            except ProcessLookupError:
                pass
        wait_for(lambda: not any(procs.alive(p) for p in pids.values()), timeout=30, message="all killed")
        # ... and a third cluster takes the node over, clearing what the killed one left.
        third = Cluster(tmp_path_factory.mktemp("realnode-third"), pools=(), real_node=True, startup_timeout=180)
        third.start()
        try:
            _create(third, "default", _pod(third, "after", ["sh", "-c", "echo ok"], sc={}))
            assert _phase(third, "default", "after", "Succeeded", "Failed")["status"]["phase"] == "Succeeded"
        finally:
            third.stop()
        assert _host_state() == host_before
    finally:
        again.stop()
    assert stop_seconds < 60

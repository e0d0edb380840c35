"""prometheus-adapter serving a local cluster's custom metrics API from its Prometheus.

The adapter (built by hack/build-binaries.sh) runs on this machine as a cluster component
(``Cluster.spawn_component``: ``stop`` and ``hack/cluster down`` stop it), listening on the real
node's address with a serving certificate from its own throwaway CA. The API server's
aggregation layer (request-header authentication and the front-proxy client certificate are
configured in ``kubetest.cluster``) reaches it the way it reaches any extension API server: an
APIService names a Service, here one without a selector whose Endpoints hold the node address
and the adapter's port; the aggregator (``--enable-aggregator-routing``) dials that endpoint
directly. A ClusterIP would need kube-proxy's rule for it on this host: a KEDA run in CI saw the
aggregator's availability checks answered 404 for a minute by whatever the default route reaches.

The adapter authenticates and authorises the requests it gets by delegation (TokenReview,
SubjectAccessReview, the ``extension-apiserver-authentication`` ConfigMap) and lists the pods an
HPA's selector picks, all with the admin kubeconfig. The HPA controller reads the metrics as its
own service account (``system:controller:horizontal-pod-autoscaler`` may read
custom.metrics.k8s.io).

``--metrics-relist-interval`` is short (5 s): the adapter serves only metrics whose series it
found at its last listing of Prometheus, so with the default (10 minutes) a ModelDeployment
created after the adapter started would wait that long for its metrics.
"""

from __future__ import annotations

import base64
import subprocess
from typing import TYPE_CHECKING, Any, Optional

import yaml

from . import binaries, node, pki, procs
from .rest import ApiError
from .wait import wait_for

if TYPE_CHECKING:
    from .cluster import Cluster

NAME = "prometheus-adapter"
NAMESPACE = "kube-system"
GROUP = "custom.metrics.k8s.io"
# The HPA controller asks discovery for the newest version served; the adapter serves both.
VERSIONS = ("v1beta1", "v1beta2")


class MetricsAdapterError(RuntimeError):
    pass


def apiservice(version: str, ca_pem: bytes, group: str = GROUP, name: str = NAME, namespace: str = NAMESPACE) -> dict[str, Any]:
    return {
        "apiVersion": "apiregistration.k8s.io/v1",
        "kind": "APIService",
        "metadata": {"name": f"{version}.{group}"},
        "spec": {
            "group": group, "version": version,
            "service": {"namespace": namespace, "name": name, "port": 443},
            "caBundle": base64.b64encode(ca_pem).decode(),
            "groupPriorityMinimum": 100,
            "versionPriority": 200 if version == "v1beta2" else 100,
        },
    }


def service_and_endpoints(ip: str, port: int, name: str = NAME, namespace: str = NAMESPACE) -> tuple[dict[str, Any], dict[str, Any]]:
    """A Service without a selector and its Endpoints: the adapter's address on this machine
    (the EndpointSlice mirroring controller makes the EndpointSlice kube-proxy reads)."""
    meta = {"name": name, "namespace": namespace, "labels": {"app.kubernetes.io/name": name}}
    service = {"apiVersion": "v1", "kind": "Service", "metadata": meta,
               "spec": {"ports": [{"name": "https", "port": 443, "targetPort": port, "protocol": "TCP"}]}}
    endpoints = {"apiVersion": "v1", "kind": "Endpoints", "metadata": meta,
                 "subsets": [{"addresses": [{"ip": ip}], "ports": [{"name": "https", "port": port, "protocol": "TCP"}]}]}
    return service, endpoints


def _available(obj: dict[str, Any]) -> Optional[dict[str, Any]]:
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Available":
            return dict(cond)
    return None


def register(cluster: "Cluster", name: str, group: str, versions: tuple[str, ...], port: int, ca_pem: bytes,
             proc: subprocess.Popen, timeout: float) -> None:
    """Register an extension API server listening on the real node's address at ``port`` (its
    serving certificate signed by ``ca_pem``) as ``group``'s ``versions``, through a Service
    ``name`` in kube-system, and wait until the API server lists every version Available (raising
    with the log's tail if ``proc`` exits first)."""
    kube = cluster.kube
    service, endpoints = service_and_endpoints(node.NODE_IP, port, name)
    kube.apply(f"/api/v1/namespaces/{NAMESPACE}/services/{name}", service)
    kube.apply(f"/api/v1/namespaces/{NAMESPACE}/endpoints/{name}", endpoints)
    for version in versions:
        kube.apply(f"/apis/apiregistration.k8s.io/v1/apiservices/{version}.{group}", apiservice(version, ca_pem, group, name))

    def available() -> Any:
        if proc.poll() is not None:
            tail = cluster.log_path(name).read_text(errors="replace")[-3000:]
            raise MetricsAdapterError(f"{name} exited with {proc.returncode}; last log lines:\n{tail}")
        conds = {v: _available(kube.get(f"/apis/apiregistration.k8s.io/v1/apiservices/{v}.{group}")) for v in versions}
        return all((c or {}).get("status") == "True" for c in conds.values()) or conds

    wait_for(available, timeout=timeout, interval=0.5, message=f"APIServices of {group} Available")


def unregister(cluster: "Cluster", name: str, group: str, versions: tuple[str, ...]) -> None:
    """Remove what ``register`` made, APIServices first (an unavailable one would break
    discovery for every client), then stop the process ``name``."""
    kube = cluster.kube
    paths = [f"/apis/apiregistration.k8s.io/v1/apiservices/{v}.{group}" for v in versions]
    paths += [f"/api/v1/namespaces/{NAMESPACE}/{kind}/{name}" for kind in ("services", "endpoints")]
    for path in paths:
        try:
            kube.delete(path)
        except ApiError as e:
            if e.status != 404:
                raise
    cluster.stop_component(name)


class MetricsAdapter:
    """``start()`` runs the adapter with ``rules`` (its --config, e.g.
    ``model_operator.scaling.adapter.adapter_rules(window)``) against ``prometheus_url`` and
    waits until the API server lists the custom metrics API as Available; ``stop()`` removes
    the APIServices first (an unavailable one would break discovery for every client), then
    the process."""

    def __init__(self, cluster: "Cluster", prometheus_url: str, rules: dict[str, Any], relist_interval: str = "5s") -> None:
        self.cluster = cluster
        self.prometheus_url = prometheus_url
        self.rules = rules
        self.relist_interval = relist_interval
        self.directory = cluster.state_dir / NAME
        self.proc: Optional[subprocess.Popen] = None

    @property
    def log(self) -> Any:
        return self.cluster.log_path(NAME)

    def start(self, timeout: float = 120) -> "MetricsAdapter":
        if not self.cluster.real_node:
            raise MetricsAdapterError("the metrics adapter needs the real node: the aggregation layer reaches it through "
                                      "a Service ClusterIP, which only the real node's kube-proxy routes")
        binary = binaries.require([NAME])[NAME]
        self.directory.mkdir(parents=True, exist_ok=True)
        config = self.directory / "config.yaml"
        config.write_text(yaml.safe_dump(self.rules, sort_keys=False))
        ca = pki.CertificateAuthority(self.directory / "pki", name=f"{NAME}-ca")
        serving = ca.issue("serving", NAME, dns=(f"{NAME}.{NAMESPACE}.svc", f"{NAME}.{NAMESPACE}.svc.cluster.local"),
                           ips=(node.NODE_IP,), server=True, client=False)
        port = procs.free_port(node.NODE_IP)
        kubeconfig = self.cluster.kubeconfig
        self.proc = self.cluster.spawn_component(NAME, [
            binary,
            f"--bind-address={node.NODE_IP}", f"--secure-port={port}",
            f"--tls-cert-file={serving.cert}", f"--tls-private-key-file={serving.key}",
            f"--lister-kubeconfig={kubeconfig}",
            f"--authentication-kubeconfig={kubeconfig}", f"--authorization-kubeconfig={kubeconfig}",
            f"--prometheus-url={self.prometheus_url}",
            f"--config={config}",
            f"--metrics-relist-interval={self.relist_interval}",
            "--v=2",
        ])
        register(self.cluster, NAME, GROUP, VERSIONS, port, ca.pair.cert.read_bytes(), self.proc, timeout)
        return self

    def stop(self) -> None:
        unregister(self.cluster, NAME, GROUP, VERSIONS)
        self.proc = None

    def pod_metric(self, namespace: str, metric: str, selector: str = "") -> list[dict[str, Any]]:
        """The custom metrics API's answer for ``metric`` on the pods ``selector`` picks (its
        ``items``: one per pod with data), as the HPA controller reads it."""
        path = f"/apis/{GROUP}/{VERSIONS[0]}/namespaces/{namespace}/pods/*/{metric}"
        params = {"labelSelector": selector} if selector else {}
        return list(self.cluster.kube.get(path, **params).get("items") or [])

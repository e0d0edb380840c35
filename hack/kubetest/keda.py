"""KEDA (its operator and its external metrics API server) running against a local cluster.

Both programs (built by hack/build-binaries.sh, with the CustomResourceDefinitions of the same
release next to the operator) run on this machine as cluster components
(``Cluster.spawn_component``: ``stop`` and ``hack/cluster down`` stop them), with the admin
kubeconfig. They talk to each other over KEDA's mutually authenticated gRPC metrics service on
the loopback address; both read ``ca.crt``, ``tls.crt`` and ``tls.key`` from one directory,
signed by a throwaway CA (the operator's own certificate rotation is off: it would write a
Secret and patch the APIService).

The metrics server is registered as ``v1beta1.external.metrics.k8s.io`` the way
``metrics_adapter`` registers prometheus-adapter's custom metrics API (a selector-less Service
on the real node's address), so the HPA controller reads the metrics KEDA's HPAs name through
the aggregation layer; it needs the real node. The operator turns each ScaledObject into an
HPA ``keda-hpa-<name>`` and answers the metrics server's requests by running the triggers
(here: Prometheus queries against the session's Prometheus).
"""

from __future__ import annotations

import subprocess
import time
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from . import binaries, metrics_adapter, node, pki, procs
from .cluster import KubectlError
from .wait import wait_for

if TYPE_CHECKING:
    from .cluster import Cluster

OPERATOR = "keda-operator"
SERVER = "keda-metrics-apiserver"
GROUP = "external.metrics.k8s.io"
VERSIONS = ("v1beta1",)
# Where KEDA keeps cluster-wide objects and its leader lease (none here): the Service for the
# APIService lives there too.
NAMESPACE = metrics_adapter.NAMESPACE


class KedaError(RuntimeError):
    pass


def crd_files() -> list[Path]:
    """KEDA's CustomResourceDefinitions of the pinned release (the build copies them next to
    the operator binary); raise BinariesMissing naming the build command when absent."""
    directory = binaries.require([OPERATOR])[OPERATOR].parent / "crds"
    files = sorted(directory.glob("*.yaml"))
    if not files:
        raise binaries.BinariesMissing(f"no KEDA CustomResourceDefinitions under {directory}; rebuild with "
                                       f"{binaries.BUILD_SCRIPT} {OPERATOR} after removing {directory.parent}")
    return files


def crd_names(files: list[Path]) -> list[str]:
    """``<group>_<plural>.yaml`` (controller-gen's file names) -> ``crd/<plural>.<group>``."""
    names = []
    for f in files:
        group, _, plural = f.stem.partition("_")
        names.append(f"crd/{plural}.{group}")
    return names


def install_crds(cluster: "Cluster", timeout: int = 60) -> None:
    files = crd_files()
    args = [a for f in files for a in ("-f", str(f))]
    # Server-side: the ScaledJob CRD is too big for client-side apply's annotation.
    cluster.kubectl("apply", "--server-side", "--force-conflicts", *args)
    cluster.kubectl("wait", "--for=condition=Established", f"--timeout={timeout}s", *crd_names(files), timeout=timeout + 30)


def remove_crds(cluster: "Cluster", timeout: int = 300) -> None:
    """Delete KEDA's CRDs and wait until they are gone, asking again while time is left: a CRD
    goes only after the API server has deleted every object of its kind. On a loaded 2-core
    machine that once took longer than 60 s with no object left to wait for, and in CI on
    c6c8e6e a kubectl delete waiting up to 180 s exited 1 (its message was not kept)."""
    args = [a for f in crd_files() for a in ("-f", str(f))]
    deadline = time.monotonic() + timeout
    while True:
        left = max(1, int(deadline - time.monotonic()))
        try:
            cluster.kubectl("delete", "--ignore-not-found", "--wait", f"--timeout={left}s", *args, timeout=left + 30)
            return
        except KubectlError as exc:
            if time.monotonic() >= deadline:
                raise KedaError(f"KEDA's CustomResourceDefinitions were not removed in {timeout} s: {exc}") from exc
        time.sleep(2)


class Keda:
    """``start()`` installs KEDA's CRDs, runs the operator until it answers its readiness probe,
    then the metrics server until the API server lists external.metrics.k8s.io Available.
    ``stop()`` unregisters the metrics API, removes the CRDs while the operator still runs (it
    takes its finalizers off the ScaledObjects that go with them), then stops both."""

    def __init__(self, cluster: "Cluster") -> None:
        self.cluster = cluster
        self.directory = cluster.state_dir / "keda"
        self.operator: Optional[subprocess.Popen] = None
        self.server: Optional[subprocess.Popen] = None

    def _env(self) -> list[str]:
        return ["env", f"KUBECONFIG={self.cluster.kubeconfig}", "WATCH_NAMESPACE=",
                f"POD_NAMESPACE={NAMESPACE}", f"KEDA_CLUSTER_OBJECT_NAMESPACE={NAMESPACE}"]

    def _exited(self, name: str, proc: subprocess.Popen) -> None:
        if proc.poll() is not None:
            tail = self.cluster.log_path(name).read_text(errors="replace")[-3000:]
            raise KedaError(f"{name} exited with {proc.returncode}; last log lines:\n{tail}")

    def start(self, timeout: float = 120) -> "Keda":
        if not self.cluster.real_node:
            raise KedaError("KEDA's metrics server needs the real node: the aggregation layer reaches it through "
                            "a Service ClusterIP, which only the real node's kube-proxy routes")
        bins = binaries.require([OPERATOR, SERVER])
        install_crds(self.cluster)
        certs = self.directory / "certs"
        ca = pki.CertificateAuthority(certs, name="keda-ca")
        dns = tuple(f"{n}.{NAMESPACE}.svc{d}" for n in (OPERATOR, SERVER) for d in ("", ".cluster.local"))
        ca.issue("tls", OPERATOR, dns=dns, ips=(node.NODE_IP, "127.0.0.1"), server=True, client=True)
        grpc = f"127.0.0.1:{procs.free_port('127.0.0.1')}"
        probe = f"127.0.0.1:{procs.free_port('127.0.0.1')}"
        self.operator = self.cluster.spawn_component(OPERATOR, [
            *self._env(), bins[OPERATOR],
            "--leader-elect=false", "--enable-cert-rotation=false",
            f"--cert-dir={certs}",
            f"--metrics-service-bind-address={grpc}",
            f"--metrics-bind-address=127.0.0.1:{procs.free_port('127.0.0.1')}",
            f"--health-probe-bind-address={probe}",
        ])
        operator = self.operator

        def ready() -> bool:
            self._exited(OPERATOR, operator)
            try:
                with urllib.request.urlopen(f"http://{probe}/readyz", timeout=2) as r:
                    return bool(r.status == 200)
            except OSError:
                return False

        wait_for(ready, timeout=timeout, interval=0.5, message=f"{OPERATOR} ready")
        port = procs.free_port(node.NODE_IP)
        kubeconfig = self.cluster.kubeconfig
        self.server = self.cluster.spawn_component(SERVER, [
            *self._env(), bins[SERVER],
            f"--bind-address={node.NODE_IP}", f"--secure-port={port}",
            f"--cert-dir={certs}", f"--tls-cert-file={certs / 'tls.crt'}", f"--tls-private-key-file={certs / 'tls.key'}",
            f"--lister-kubeconfig={kubeconfig}",
            f"--authentication-kubeconfig={kubeconfig}", f"--authorization-kubeconfig={kubeconfig}",
            f"--metrics-service-address={grpc}",
            f"--port={procs.free_port('127.0.0.1')}",
        ])
        metrics_adapter.register(self.cluster, SERVER, GROUP, VERSIONS, port, ca.pair.cert.read_bytes(), self.server, timeout)
        return self

    def stop(self) -> None:
        metrics_adapter.unregister(self.cluster, SERVER, GROUP, VERSIONS)
        self.server = None
        try:
            remove_crds(self.cluster)
        finally:
            self.cluster.stop_component(OPERATOR)
            self.operator = None

    def external_metric(self, namespace: str, metric: str, scaled_object: str) -> list[dict[str, Any]]:
        """The external metrics API's answer for one of a ScaledObject's metrics, as the HPA
        controller reads it (KEDA picks the ScaledObject by this label selector)."""
        path = f"/apis/{GROUP}/{VERSIONS[0]}/namespaces/{namespace}/{metric}"
        selector = f"scaledobject.keda.sh/name={scaled_object}"
        return list(self.cluster.kube.get(path, labelSelector=selector).get("items") or [])

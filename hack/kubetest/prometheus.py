"""A real Prometheus (Debian's ``prometheus`` package) pointed at a local cluster.

It discovers pods through ``kubernetes_sd_configs`` (role: pod) against the
cluster's API server, authenticating with the admin client certificate, and
scrapes those that ask for it, the usual convention:

* annotation (or label) ``prometheus.io/scrape: "true"`` selects the pod;
* ``prometheus.io/port`` picks the port (default: each declared container port);
* ``prometheus.io/path`` the path (default ``/metrics``),
  ``prometheus.io/scheme`` http or https;
* the target address is the pod IP; series get ``namespace``, ``pod``,
  ``container`` (not when ``prometheus.io/port`` names the port: one target per pod),
  ``node`` and every pod label as ``label_<name>`` (sanitised
  the Prometheus way: ``app.kubernetes.io/name`` -> ``label_app_kubernetes_io_name``).

Pods that are Pending, Succeeded or Failed are not scraped. A second job scrapes every
container port named ``probe-metrics`` (the golden-set probe beside Triton) with the same labels.
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import yaml

from . import binaries, node, procs
from .wait import wait_for

if TYPE_CHECKING:
    from .cluster import Cluster


class PrometheusError(RuntimeError):
    pass


# The golden-set probe container beside each Triton serves its gauges on a port of this name
# (model_operator.resources.common.PROBE_METRICS_PORT_NAME). A cluster with the Prometheus operator
# scrapes it through the ServiceMonitor's second endpoint; here a second job finds it by port name.
PROBE_PORT_NAME = "probe-metrics"


def scrape_config(server: str, ca: Path, cert: Path, key: str | Path, scrape_interval: str) -> dict[str, Any]:
    """The whole prometheus.yml, as a dict."""
    sd = [{"role": "pod", "api_server": server, "tls_config": {"ca_file": str(ca), "cert_file": str(cert), "key_file": str(key)}}]
    common = [
        {"action": "labelmap", "regex": "__meta_kubernetes_pod_label_(.+)", "replacement": "label_$1"},
        {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
        {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
        {"source_labels": ["__meta_kubernetes_pod_container_name"], "target_label": "container"},
    ]
    probe_job = {
        "job_name": "golden-probe",
        "kubernetes_sd_configs": sd,
        "relabel_configs": [
            {"source_labels": ["__meta_kubernetes_pod_container_port_name"], "regex": PROBE_PORT_NAME, "action": "keep"},
            {"source_labels": ["__meta_kubernetes_pod_phase"], "regex": "Pending|Succeeded|Failed", "action": "drop"},
            *common,
            {"source_labels": ["__meta_kubernetes_pod_node_name"], "target_label": "node"},
        ],
    }
    return {
        "global": {"scrape_interval": scrape_interval, "evaluation_interval": scrape_interval,
                   "scrape_timeout": scrape_interval},
        "scrape_configs": [{
            "job_name": "kubernetes-pods",
            "kubernetes_sd_configs": sd,
            "relabel_configs": [
                {"source_labels": ["__meta_kubernetes_pod_annotation_prometheus_io_scrape",
                                   "__meta_kubernetes_pod_label_prometheus_io_scrape"],
                 "regex": "true;.*|.*;true", "action": "keep"},
                {"source_labels": ["__meta_kubernetes_pod_phase"], "regex": "Pending|Succeeded|Failed",
                 "action": "drop"},
                {"source_labels": ["__meta_kubernetes_pod_annotation_prometheus_io_path"], "regex": "(.+)",
                 "target_label": "__metrics_path__"},
                {"source_labels": ["__meta_kubernetes_pod_annotation_prometheus_io_scheme"], "regex": "(https?)",
                 "target_label": "__scheme__"},
                {"source_labels": ["__meta_kubernetes_pod_ip", "__meta_kubernetes_pod_annotation_prometheus_io_port"],
                 "regex": "(.+);([0-9]+)", "replacement": "$1:$2", "target_label": "__address__"},
                *common,
                # With prometheus.io/port every declared port of every container becomes the same
                # address: without the container label those targets are identical and Prometheus
                # keeps one, so a pod of two containers (Triton and the OpenAI front) is not scraped
                # twice (its series doubled in every sum).
                {"source_labels": ["__meta_kubernetes_pod_annotation_prometheus_io_port"], "regex": "[0-9]+",
                 "target_label": "container", "replacement": ""},
                {"source_labels": ["__meta_kubernetes_pod_node_name"], "target_label": "node"},
            ],
        }, probe_job],
    }


class Prometheus:
    """One Prometheus server: ``start`` it, ``query`` it.

    Parameters: the cluster's API server URL and admin TLS files, a directory
    for config and data, the scrape interval, and the port (default: free).
    """

    def __init__(self, directory: Path, server: str, ca: Path, cert: Path, key: Path,
                 scrape_interval: str = "2s", port: Optional[int] = None, host: str = "127.0.0.1") -> None:
        self.directory = directory
        self.server = server
        self.tls = (ca, cert, key)
        self.scrape_interval = scrape_interval
        self.port = port or procs.free_port()
        self.host = host
        self.url = f"http://{host}:{self.port}"

    @classmethod
    def for_cluster(cls, cluster: "Cluster", scrape_interval: str = "2s") -> "Prometheus":
        pki = cluster.pki_dir
        # With a real node, listen on the node's address: reachable from this machine and from
        # pods (an operator running as a pod queries it), not from other hosts.
        host = node.NODE_IP if cluster.real_node else "127.0.0.1"
        return cls(cluster.state_dir / "prometheus", cluster.server, pki / "ca.crt", pki / "admin.crt",
                   pki / "admin.key", scrape_interval, host=host)

    @property
    def config_path(self) -> Path:
        return self.directory / "prometheus.yml"

    def start(self, deadline: Optional[float] = None, log: Optional[Path] = None) -> subprocess.Popen:
        binary = binaries.prometheus_binary()
        (self.directory / "data").mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(yaml.safe_dump(scrape_config(self.server, *self.tls, self.scrape_interval),
                                                   sort_keys=False))
        log = log or self.directory.parent / "logs" / "prometheus.log"
        proc = procs.spawn([
            str(binary), f"--config.file={self.config_path}", f"--storage.tsdb.path={self.directory / 'data'}",
            f"--web.listen-address={self.host}:{self.port}", "--storage.tsdb.retention.time=1d",
            "--web.enable-lifecycle",
        ], log)
        timeout = (deadline - time.monotonic()) if deadline else 30.0

        def ready() -> bool:
            if proc.poll() is not None:
                raise PrometheusError(f"prometheus exited with {proc.returncode}; see {log}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as r:
                    return r.status == 200
            except OSError:
                return False

        wait_for(ready, timeout=max(1.0, timeout), interval=0.2, message="prometheus /-/ready")
        return proc

    # ----------------------------------------------------------------- queries
    def api(self, path: str, **params: str) -> Any:
        url = f"{self.url}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        with urllib.request.urlopen(url, timeout=10) as r:
            body = json.loads(r.read())
        if body.get("status") != "success":
            raise PrometheusError(f"{path}: {body}")
        return body["data"]

    def query(self, promql: str) -> list[dict[str, Any]]:
        """Instant query; the ``result`` list of a vector (``metric``, ``value``)."""
        return self.api("query", query=promql)["result"]

    def targets(self) -> list[dict[str, Any]]:
        return self.api("targets")["activeTargets"]


class PrometheusHandle(Prometheus):
    """A Prometheus some other process started: only its URL is known."""

    def __init__(self, url: str) -> None:
        self.url = url

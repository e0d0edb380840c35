"""The Helm release and the operator process the chart e2e tests share: `Release` drives helm
against the test control plane; `OperatorProcess` runs `model-operator run` as a local process
with the release's configuration, authenticated as the release's ServiceAccount (a TokenRequest
token), with the environment the chart's Deployment gives its pods."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from kubetest import chartlib

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Release:
    name: str
    namespace: str
    values: dict[str, Any]
    cluster: Any
    tmp: Path

    @property
    def fullname(self) -> str:
        return chartlib.fullname(self.name, self.values)

    @property
    def service_account(self) -> str:
        return chartlib.service_account_name(self.name, self.values)

    @property
    def user(self) -> str:
        return f"system:serviceaccount:{self.namespace}:{self.service_account}"

    def helm(self, *args: str, timeout: float = 180) -> str:
        return chartlib.helm(*args, env={"KUBECONFIG": str(self.cluster.kubeconfig)}, timeout=timeout)

    def install(self) -> None:
        self.helm("install", *chartlib.template_args(self.values, release=self.name, namespace=self.namespace, values_dir=self.tmp),
                  "--wait", "--timeout", "120s")

    def upgrade(self, values: dict[str, Any]) -> None:
        self.values = values
        self.helm("upgrade", *chartlib.template_args(values, release=self.name, namespace=self.namespace, values_dir=self.tmp),
                  "--reset-values", "--wait", "--timeout", "120s")

    def uninstall(self) -> None:
        self.helm("uninstall", self.name, "--namespace", self.namespace, "--wait", "--timeout", "120s", "--ignore-not-found")

    def manifest(self) -> set[tuple[str, str | None, str]]:
        docs = [d for d in yaml.safe_load_all(self.helm("get", "manifest", self.name, "--namespace", self.namespace)) if d]
        return {(d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"]) for d in docs}

    def can_i(self, verb: str, resource: str, namespace: str | None = None, subresource: str | None = None) -> bool:
        args = ["auth", "can-i", verb, resource, "--as", self.user]
        if namespace:
            args += ["--namespace", namespace]
        if subresource:
            args += ["--subresource", subresource]
        proc = self.cluster.kubectl(*args, check=False)
        answer = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
        assert answer in ("yes", "no"), proc.stdout + proc.stderr
        return answer == "yes"


def base_values(watched: str) -> dict[str, Any]:
    return {
        # Nothing runs on the KWOK pools: the chart's own operator pods stay inert.
        "operator": {"nodeSelector": {"node-pool": "cpu"}},
        "watchNamespaces": [watched],
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


class OperatorProcess:
    """`model-operator run` as a local process with the release's configuration, as the release's
    ServiceAccount, with the environment the chart's Deployment gives its pods."""

    def __init__(self, release: Release, identity: str, tmp: Path, extra_env: dict[str, str] | None = None) -> None:
        cm = json.loads(release.cluster.kubectl(
            "get", "configmap", f"{release.fullname}-config", "-n", release.namespace, "-o", "json").stdout)
        self.config = tmp / f"{identity}-config.yaml"
        self.config.write_text(cm["data"]["config.yaml"])
        self.kubeconfig = chartlib.service_account_kubeconfig(
            release.cluster.kubeconfig, release.namespace, release.service_account, tmp / f"{identity}.kubeconfig")
        deployment = json.loads(release.cluster.kubectl(
            "get", "deployment", release.fullname, "-n", release.namespace, "-o", "json").stdout)
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
        env.pop("HOME", None)
        self.liveness = free_port()
        self.metrics = free_port()
        self.log_path = tmp / f"{identity}.log"
        self.env = {
            **os.environ,
            **env,
            "POD_ID": identity,  # what the Deployment sets from metadata.name
            "KUBECONFIG": str(self.kubeconfig),
            "MODEL_OPERATOR_METRICS_PORT": str(self.metrics),
            "MODEL_OPERATOR_RECONCILE_INTERVAL_SECONDS": "1",
            "PYTHONPATH": os.pathsep.join([str(REPO / "operator"), os.environ.get("PYTHONPATH", "")]),
            **(extra_env or {}),
        }
        for key in ("KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT"):
            self.env.pop(key, None)
        args = [a for a in container["args"] if not a.startswith(("--config=", "--liveness="))]
        self.argv = [sys.executable, "-m", "model_operator.cli", *args, f"--config={self.config}",
                     f"--liveness=http://127.0.0.1:{self.liveness}/healthz"]
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> "OperatorProcess":
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(self.argv, env=self.env, stdout=self._log, stderr=subprocess.STDOUT, cwd=str(REPO))
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def kill(self) -> None:
        """SIGKILL: no goodbye in the peering object, as when a node dies."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)

    def stop(self) -> int:
        assert self.proc is not None
        if self._log.closed:
            return self.proc.returncode
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


"""Render the chart and check what it renders: the chart's own policies, shared by the unit tests
(tests/unit/test_chart_*.py) and the end-to-end tests (tests/e2e/test_chart*.py).

Not packaged with the chart (.helmignore). No Kubernetes client here: helm runs as a subprocess.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "model-operator"
VERSIONS_ENV = REPO / "hack" / "versions.env"
MONITORING_APIS = ("monitoring.coreos.com/v1", "monitoring.coreos.com/v1/ServiceMonitor", "monitoring.coreos.com/v1/PrometheusRule")
POD_TEMPLATE_KINDS = ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job")


class HelmError(RuntimeError):
    """helm exited non-zero; the message is its stderr."""

    def __init__(self, args: list[str], returncode: int, stderr: str) -> None:
        super().__init__(stderr.strip() or f"helm exited {returncode}")
        self.args_ = args
        self.returncode = returncode
        self.stderr = stderr


def _versions() -> dict[str, str]:
    out: dict[str, str] = {}
    if VERSIONS_ENV.exists():
        for line in VERSIONS_ENV.read_text().splitlines():
            line = line.strip()
            if line and not line.startswith("#") and "=" in line:
                key, _, value = line.partition("=")
                out[key.strip()] = value.strip()
    return out


def kube_version() -> str:
    """The Kubernetes version the test control plane runs (hack/versions.env)."""
    return _versions().get("KUBERNETES_VERSION", "v1.34.4")


def cached_binary(name: str, version_key: str) -> Path | None:
    cache = Path(os.environ.get("MODEL_OPERATOR_CACHE") or Path.home() / ".cache" / "model-operator")
    version = _versions().get(version_key)
    if version:
        path = cache / "bin" / f"{name}-{version}" / name
        if os.access(path, os.X_OK):
            return path
    found = shutil.which(name)
    return Path(found) if found else None


def helm_binary() -> Path | None:
    """$MODEL_OPERATOR_HELM, the helm hack/build-binaries.sh built, or helm on PATH."""
    explicit = os.environ.get("MODEL_OPERATOR_HELM")
    if explicit:
        return Path(explicit)
    return cached_binary("helm", "HELM_VERSION")


def helm(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> str:
    binary = helm_binary()
    if binary is None:
        raise FileNotFoundError("helm not found; build it with hack/build-binaries.sh")
    argv = [str(binary), *args]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})})
    if proc.returncode != 0:
        raise HelmError(argv, proc.returncode, proc.stderr)
    return proc.stdout


def template_args(
    values: dict[str, Any] | None = None,
    *,
    release: str = "mo",
    namespace: str = "model-operator",
    set_values: Iterable[str] = (),
    values_dir: Path | None = None,
) -> list[str]:
    """Arguments after `helm template|install|upgrade`: release, chart, namespace, values (a dict is
    written to a values file in `values_dir`, or a temporary directory, and deep-merged by helm)."""
    args = [release, str(CHART), "--namespace", namespace]
    if values:
        directory = Path(values_dir or tempfile.mkdtemp(prefix="chart-values-"))
        path = directory / f"values-{len(list(directory.glob('values-*.yaml')))}.yaml"
        path.write_text(yaml.safe_dump(values, sort_keys=False))
        args += ["--values", str(path)]
    for item in set_values:
        args += ["--set", item]
    return args


def render(
    values: dict[str, Any] | None = None,
    *,
    release: str = "mo",
    namespace: str = "model-operator",
    set_values: Iterable[str] = (),
    monitoring: bool = True,
) -> list[dict[str, Any]]:
    """`helm template` as a list of objects. `monitoring` tells helm the cluster serves the
    Prometheus operator's kinds (ServiceMonitor, PrometheusRule)."""
    with tempfile.TemporaryDirectory(prefix="chart-values-") as tmp:
        args = ["template", *template_args(values, release=release, namespace=namespace, set_values=set_values, values_dir=Path(tmp))]
        args += ["--kube-version", kube_version()]
        if monitoring:
            for api in MONITORING_APIS:
                args += ["--api-versions", api]
        text = helm(*args)
    return [d for d in yaml.safe_load_all(text) if d]


def crd_files() -> list[Path]:
    return sorted((CHART / "crds").glob("*.yaml"))


def crds() -> list[dict[str, Any]]:
    return [yaml.safe_load(p.read_text()) for p in crd_files()]


def find(objs: Iterable[dict[str, Any]], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [o for o in objs if o.get("kind") == kind and (name is None or o["metadata"]["name"] == name)]


def one(objs: Iterable[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = find(objs, kind, name)
    if len(found) != 1:
        raise AssertionError(f"expected one {kind}{' ' + name if name else ''}, found {len(found)}")
    return found[0]


def pod_spec(obj: dict[str, Any]) -> dict[str, Any] | None:
    kind = obj.get("kind")
    if kind == "Pod":
        return obj.get("spec") or {}
    if kind == "CronJob":
        return obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    if kind in POD_TEMPLATE_KINDS:
        return obj["spec"]["template"]["spec"]
    return None


def containers(spec: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield from spec.get("initContainers") or []
    yield from spec.get("containers") or []
    yield from spec.get("ephemeralContainers") or []


def rbac_rules(objs: Iterable[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """(owner "Kind/name[@namespace]", rule) for every rule of every Role and ClusterRole."""
    out = []
    for o in objs:
        if o.get("kind") in ("Role", "ClusterRole"):
            meta = o["metadata"]
            owner = f"{o['kind']}/{meta['name']}" + (f"@{meta['namespace']}" if meta.get("namespace") else "")
            out += [(owner, r) for r in o.get("rules") or []]
    return out


FORBIDDEN_RESOURCES = {
    "": {"pods/exec", "pods/attach", "pods/portforward", "pods/proxy", "nodes", "nodes/proxy", "serviceaccounts/token"},
    "rbac.authorization.k8s.io": {"clusterroles", "clusterrolebindings", "roles", "rolebindings"},
    "certificates.k8s.io": {"certificatesigningrequests", "certificatesigningrequests/approval"},
    "admissionregistration.k8s.io": {"mutatingwebhookconfigurations", "validatingwebhookconfigurations"},
}
ESCALATING_VERBS = {"escalate", "bind", "impersonate"}


# With an S3 artifact store the operator writes each ModelDeployment's Secret of pre-signed URLs
# (server-side apply: create and patch) and still reads none.
SECRET_WRITE_VERBS = frozenset({"create", "patch"})


def rbac_violations(objs: Iterable[dict[str, Any]], allowed_secret_names: Iterable[str] = (), secret_writes: bool = False) -> list[str]:
    """Least-privilege rules: no "*" anywhere, no escalation verbs, no exec/attach/proxy, no RBAC
    or node writes, no Secrets except `get` on the names allowed, and with `secret_writes`
    (an S3 store) create/patch on Secrets, never get/list/watch of them all."""
    allowed = set(allowed_secret_names)
    problems = []
    for owner, rule in rbac_rules(objs):
        groups, resources, verbs = rule.get("apiGroups") or [], rule.get("resources") or [], rule.get("verbs") or []
        if "*" in groups or "*" in resources or "*" in verbs or any("*" in r for r in resources):
            problems.append(f"{owner}: wildcard in {rule}")
        if rule.get("nonResourceURLs"):
            problems.append(f"{owner}: nonResourceURLs {rule['nonResourceURLs']}")
        if ESCALATING_VERBS & set(verbs):
            problems.append(f"{owner}: escalating verbs {sorted(ESCALATING_VERBS & set(verbs))}")
        for group in groups:
            bad = FORBIDDEN_RESOURCES.get(group, set()) & set(resources)
            if bad:
                problems.append(f"{owner}: forbidden resources {sorted(bad)} in group {group!r}")
            if group == "" and "secrets" in resources:
                names = set(rule.get("resourceNames") or [])
                if secret_writes and not names and set(verbs) == SECRET_WRITE_VERBS and resources == ["secrets"]:
                    continue
                if not allowed or not names or not names <= allowed or set(verbs) - {"get"}:
                    problems.append(f"{owner}: Secrets access {verbs} on {sorted(names) or 'all Secrets'}")
    return problems


def pod_templates(objs: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    return [o for o in objs if pod_spec(o) is not None]


# --- running as the chart's ServiceAccount -------------------------------------------------------


def kubectl_binary() -> Path | None:
    """The kubectl hack/build-binaries.sh built, or kubectl on PATH."""
    return cached_binary("kubectl", "KUBERNETES_VERSION")


def fullname(release: str, values: dict[str, Any] | None = None) -> str:
    """The chart's "model-operator.fullname" for a release: the base of its object names."""
    values = values or {}
    if values.get("fullnameOverride"):
        return str(values["fullnameOverride"])[:63].rstrip("-")
    name = values.get("nameOverride") or "model-operator"
    full = release if name in release else f"{release}-{name}"
    return full[:63].rstrip("-")


def service_account_name(release: str, values: dict[str, Any] | None = None) -> str:
    """The ServiceAccount a release of this chart runs the operator as."""
    sa = ((values or {}).get("serviceAccount") or {}).get("name")
    return str(sa) if sa else fullname(release, values)


def service_account_kubeconfig(
    admin_kubeconfig: str | Path,
    namespace: str,
    service_account: str,
    path: str | Path,
    *,
    duration_seconds: int = 3600,
    audiences: Iterable[str] = (),
    kubectl: str | Path | None = None,
) -> Path:
    """Write a kubeconfig at `path` that authenticates as system:serviceaccount:<namespace>:<service_account>
    with a bound token from the TokenRequest API (`kubectl create token`), against the cluster and CA
    of the admin kubeconfig's current context. Its default namespace is `namespace`.

    Run the operator as the chart's identity with it: KUBECONFIG=<path> model-operator run ...
    (kopf and the kubernetes client both read token kubeconfigs). Returns `path`."""
    admin_kubeconfig = Path(admin_kubeconfig)
    binary = Path(kubectl) if kubectl else kubectl_binary()
    if binary is None:
        raise FileNotFoundError("kubectl not found; build it with hack/build-binaries.sh")
    argv = [str(binary), "--kubeconfig", str(admin_kubeconfig), "create", "token", service_account,
            "--namespace", namespace, f"--duration={int(duration_seconds)}s"]
    for audience in audiences:
        argv += ["--audience", audience]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise RuntimeError(f"TokenRequest for {namespace}/{service_account} failed: {proc.stderr.strip()}")
    token = proc.stdout.strip()

    admin = yaml.safe_load(admin_kubeconfig.read_text())
    context_name = admin.get("current-context")
    context = next(c["context"] for c in admin["contexts"] if c["name"] == context_name)
    cluster = dict(next(c["cluster"] for c in admin["clusters"] if c["name"] == context["cluster"]))
    # A CA given as a relative path is relative to the admin kubeconfig.
    ca = cluster.get("certificate-authority")
    if ca and not Path(ca).is_absolute():
        cluster["certificate-authority"] = str((admin_kubeconfig.parent / ca).resolve())
    user = f"system:serviceaccount:{namespace}:{service_account}"
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "cluster", "cluster": cluster}],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": service_account, "context": {"cluster": "cluster", "user": user, "namespace": namespace}}],
        "current-context": service_account,
    }
    path = Path(path)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path.chmod(0o600)
    return path

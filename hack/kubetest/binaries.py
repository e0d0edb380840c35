"""Where the binaries built by hack/build-binaries.sh live, by pinned version."""

from __future__ import annotations

import os
from pathlib import Path
from typing import NoReturn

HACK_DIR = Path(__file__).resolve().parent.parent
VERSIONS_FILE = HACK_DIR / "versions.env"
BUILD_SCRIPT = "hack/build-binaries.sh"

_VERSION_KEY = {
    "kube-apiserver": "KUBERNETES_VERSION",
    "kube-controller-manager": "KUBERNETES_VERSION",
    "kube-scheduler": "KUBERNETES_VERSION",
    "kubectl": "KUBERNETES_VERSION",
    "kubelet": "KUBERNETES_VERSION",
    "kube-proxy": "KUBERNETES_VERSION",
    "etcd": "ETCD_VERSION",
    "kwok": "KWOK_VERSION",
    "helm": "HELM_VERSION",
    "prometheus": "PROMETHEUS_VERSION",
    "prometheus-adapter": "PROMETHEUS_ADAPTER_VERSION",
    "keda-operator": "KEDA_VERSION",
    "keda-metrics-apiserver": "KEDA_VERSION",
}
CLUSTER_BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl", "kwok")
# What Cluster(real_node=True) needs on top: the node agents (built) ...
NODE_BINARIES = ("kubelet", "kube-proxy")
# ... and Debian's runtime, CNI plugins and network tools (hack/install.sh installs them).
NODE_HOST_TOOLS = ("containerd", "ctr", "runc", "iptables", "iptables-save", "iptables-restore", "conntrack", "ip", "gcc")
CNI_PLUGIN_DIR = Path("/usr/lib/cni")
CNI_PLUGINS = ("bridge", "host-local", "loopback", "portmap")


class BinariesMissing(RuntimeError):
    """Some binary the cluster needs has not been built yet."""


def cache_dir() -> Path:
    """``$MODEL_OPERATOR_CACHE``, default ``~/.cache/model-operator``."""
    return Path(os.environ.get("MODEL_OPERATOR_CACHE") or Path.home() / ".cache" / "model-operator")


def versions() -> dict[str, str]:
    out: dict[str, str] = {}
    for line in VERSIONS_FILE.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip()
    return out


def version_of(name: str) -> str:
    return versions()[_VERSION_KEY[name]]


def path_of(name: str) -> Path:
    """The cached binary for ``name`` at its pinned version (may not exist)."""
    v = version_of(name)
    return cache_dir() / "bin" / f"{name}-{v}" / name


def require(names: tuple[str, ...] | list[str] = CLUSTER_BINARIES) -> dict[str, Path]:
    """Paths of ``names``; raise BinariesMissing naming the build command otherwise."""
    found = {n: path_of(n) for n in names}
    missing = [n for n, p in found.items() if not os.access(p, os.X_OK)]
    if missing:
        raise BinariesMissing(
            f"missing {', '.join(missing)} under {cache_dir() / 'bin'}; build them with {BUILD_SCRIPT}"
            " (the first build takes a while)"
        )
    return found


def require_node_tools() -> dict[str, Path]:
    """Host programs and CNI plugins a real node needs; raise BinariesMissing naming
    hack/install.sh otherwise."""
    import shutil

    found: dict[str, Path] = {}
    missing = []
    for tool in NODE_HOST_TOOLS:
        where = shutil.which(tool) or shutil.which(tool, path="/usr/sbin:/sbin")
        if where:
            found[tool] = Path(where)
        else:
            missing.append(tool)
    missing += [f"CNI plugin {p}" for p in CNI_PLUGINS if not os.access(CNI_PLUGIN_DIR / p, os.X_OK)]
    if missing:
        raise BinariesMissing(f"missing {', '.join(missing)}; install them with hack/install.sh (as root: containerd,"
                              " runc, containernetworking-plugins, iptables, conntrack, gcc)")
    if os.geteuid() != 0:
        raise BinariesMissing("a real node needs root (containerd, kubelet, network setup)")
    return found


def prometheus_binary() -> Path:
    """The Prometheus built by hack/build-binaries.sh, or ``$MODEL_OPERATOR_PROMETHEUS``.

    Debian's ``prometheus`` package can't be used: it is built without
    Kubernetes service discovery ("field kubernetes_sd_configs not found").
    """
    explicit = os.environ.get("MODEL_OPERATOR_PROMETHEUS")
    if explicit:
        if not os.access(explicit, os.X_OK):
            raise BinariesMissing(f"MODEL_OPERATOR_PROMETHEUS={explicit} is not an executable")
        return Path(explicit)
    return require(["prometheus"])["prometheus"]


def unavailable(message: str) -> NoReturn:
    """Skip a test whose tools are missing on a developer machine; fail it in CI (CI set), so
    a CI run can never pass by skipping."""
    import pytest

    if os.environ.get("CI"):
        pytest.fail(f"e2e environment unavailable in CI: {message}", pytrace=False)
    pytest.skip(message)

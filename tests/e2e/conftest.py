"""Fixtures for end-to-end tests against a real control plane (hack/kubetest).

Session-wide: ``cluster`` (a ``kubetest.Cluster``, started once per session,
or the one named by ``$MODEL_OPERATOR_E2E_CLUSTER``), ``kube`` (a
``kubernetes.client.ApiClient``), ``core_api``/``apps_api``/``batch_api``/
``custom_api``/``apiext_api``, ``kubectl`` (runs the pinned kubectl),
``prometheus`` (a Prometheus scraping annotated pods), ``crd_installed``
(the project's CRDs from crds/ applied). Per test: ``namespace`` (a fresh
random namespace, deleted afterwards). ``wait_for`` is
``kubetest.wait.wait_for``.

Without the binaries the tests skip, naming hack/build-binaries.sh; with
``$CI`` set they fail instead, so CI can never pass by skipping them.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from kubetest import binaries
from kubetest.cluster import Cluster, ClusterError
from kubetest.wait import wait_for as _wait_for

REPO = Path(__file__).resolve().parents[2]


_unavailable = binaries.unavailable

# Every test namespace enforces the `restricted` Pod Security level, so the API server refuses any
# pod the operator or the chart makes that isn't restricted (as on a hardened cluster).
RESTRICTED_NS_LABELS = {"pod-security.kubernetes.io/enforce": "restricted", "pod-security.kubernetes.io/enforce-version": "latest"}


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    """The real node's own tests start, stop and kill a real node of their own, and only one fits
    on a machine: they run first, before anything starts the session cluster."""
    first = [i for i in items if i.path.name == "test_cluster_realnode.py"]
    if first:
        items[:] = first + [i for i in items if i.path.name != "test_cluster_realnode.py"]


def _registries() -> dict[str, str]:
    """The local registry the images are pushed to (kubetest.registry), started if needed."""
    from kubetest import registry

    try:
        address = registry.ensure_running()
    except registry.RegistryError as e:
        _unavailable(f"{e}: run hack/install.sh")
    return {address: f"http://{address}"}


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """The control plane, KWOK pools (gpu-*, edge-*, cpu-*) and the real node ``local-0``: a
    kubelet with containerd, runc, CNI and kube-proxy (``kubetest.node``) that pulls the
    project's images from the local registry (``kubetest.registry``).

    ``$MODEL_OPERATOR_E2E_CLUSTER=<state dir>`` reuses a cluster started with
    ``hack/cluster up --real-node`` (faster when iterating); ``$MODEL_OPERATOR_E2E_STATE_DIR``
    picks where the session's own cluster lives (default: a pytest temp dir).
    """
    existing = os.environ.get("MODEL_OPERATOR_E2E_CLUSTER")
    if existing:
        try:
            yield Cluster.attach(existing)
        except ClusterError as e:
            pytest.fail(str(e), pytrace=False)
        return
    try:
        binaries.require()
        binaries.require([*binaries.NODE_BINARIES])
        binaries.require_node_tools()
    except binaries.BinariesMissing as e:
        _unavailable(str(e))
    state = os.environ.get("MODEL_OPERATOR_E2E_STATE_DIR") or tmp_path_factory.mktemp("cluster")
    c = Cluster(state, real_node=True, registries=_registries(), startup_timeout=180)
    c.start()
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="session")
def images(cluster: Cluster) -> dict[str, str]:
    """The project's images in the local registry, current with the working tree
    (``{"operator", "worker", "triton"}`` -> reference), pulled onto the real node once per
    session so no test's deadline pays for the first pull of the multi-GB worker image."""
    from kubetest import imagebuild, registry

    try:
        refs = imagebuild.built_images()
    except imagebuild.ImagesStale as e:
        _unavailable(str(e))
    host = registry.ensure_running()
    if host not in (cluster.info.get("registries") or {}):
        cluster.add_registry(host, f"http://{host}")
    for ref in (refs["triton"], refs["worker"], refs["operator"]):
        cluster.pull(ref)
    return refs


@pytest.fixture(scope="session")
def kube(cluster: Cluster) -> Iterator[Any]:
    """A ``kubernetes.client.ApiClient`` authenticated as cluster admin."""
    from kubernetes import config

    client = config.new_client_from_config(config_file=str(cluster.kubeconfig))
    yield client
    client.close()


@pytest.fixture(scope="session")
def core_api(kube: Any) -> Any:
    from kubernetes import client

    return client.CoreV1Api(kube)


@pytest.fixture(scope="session")
def apps_api(kube: Any) -> Any:
    from kubernetes import client

    return client.AppsV1Api(kube)


@pytest.fixture(scope="session")
def batch_api(kube: Any) -> Any:
    from kubernetes import client

    return client.BatchV1Api(kube)


@pytest.fixture(scope="session")
def custom_api(kube: Any) -> Any:
    from kubernetes import client

    return client.CustomObjectsApi(kube)


@pytest.fixture(scope="session")
def apiext_api(kube: Any) -> Any:
    from kubernetes import client

    return client.ApiextensionsV1Api(kube)


@pytest.fixture(scope="session")
def kubectl(cluster: Cluster) -> Callable[..., Any]:
    """``kubectl(*args, input=None, check=True)`` -> CompletedProcess (text)."""
    return cluster.kubectl


@pytest.fixture
def namespace(core_api: Any) -> Iterator[str]:
    """A fresh namespace ``e2e-<random>``, ready for pods (default ServiceAccount exists)."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    name = f"e2e-{uuid.uuid4().hex[:8]}"
    core_api.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name, labels={"e2e": "true", **RESTRICTED_NS_LABELS})))
    _wait_for(lambda: core_api.read_namespaced_service_account("default", name), timeout=30,
              message=f"ServiceAccount {name}/default", ignore=(ApiException,))
    yield name
    try:
        core_api.delete_namespace(name)
    except ApiException as e:
        if e.status != 404:
            raise


@pytest.fixture(scope="session")
def prometheus(cluster: Cluster) -> Any:
    """Prometheus scraping pods annotated ``prometheus.io/scrape: "true"`` every 2 s.

    A ``kubetest.prometheus.PrometheusHandle``: ``.url``, ``.query(promql)``,
    ``.targets()``.
    """
    try:
        binaries.prometheus_binary()
    except binaries.BinariesMissing as e:
        _unavailable(str(e))
    return cluster.start_prometheus(scrape_interval="2s")


@pytest.fixture(scope="session")
def crd_installed(cluster: Cluster) -> list[str]:
    """The project's CRDs (crds/*.yaml) applied and Established; their names."""
    names = []
    for path in sorted((REPO / "crds").glob("*.yaml")):
        cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(path))
        names.append(cluster.kubectl("get", "-f", str(path), "-o", "name").stdout.strip())
    for name in names:
        cluster.kubectl("wait", "--for=condition=Established", "--timeout=30s", name)
    return names


@pytest.fixture(scope="session")
def wait_for() -> Callable[..., Any]:
    """``wait_for(predicate, timeout=30, interval=0.5, message=..., ignore=())``."""
    return _wait_for


# --- the Helm chart (tests/e2e/test_chart*.py, tests/e2e/operator/test_chart_identity.py) -----


@pytest.fixture(scope="module")
def chart_crds(cluster: Cluster) -> Iterator[list[str]]:
    """The chart's CRDs, and minimal monitoring.coreos.com CRDs (no Prometheus operator here).
    The monitoring CRDs are removed again if this module added them, so later tests see the
    cluster as it was (the operator creates ServiceMonitors only where the kind exists)."""
    from kubetest import chartlib

    if chartlib.helm_binary() is None:
        _unavailable("helm not built: run hack/build-binaries.sh")
    monitoring = REPO / "tests" / "e2e" / "fixtures" / "monitoring.coreos.com-crds.yaml"
    had_monitoring = cluster.kubectl("get", "-f", str(monitoring), "-o", "name", check=False).returncode == 0
    names = []
    for path in [*chartlib.crd_files(), monitoring]:
        cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(path))
        names += cluster.kubectl("get", "-f", str(path), "-o", "name").stdout.split()
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", *names)
    yield names
    if not had_monitoring:
        cluster.kubectl("delete", "-f", str(monitoring), "--ignore-not-found", "--timeout=60s", check=False)


@pytest.fixture
def watched(core_api: Any) -> Iterator[str]:
    """A second namespace: the one a chart-installed operator watches (the release lives in `namespace`)."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    name = f"e2e-w-{uuid.uuid4().hex[:6]}"
    core_api.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name, labels={"e2e": "true", **RESTRICTED_NS_LABELS})))
    yield name
    try:
        core_api.delete_namespace(name)
    except ApiException as e:
        if e.status != 404:
            raise


@pytest.fixture
def release(cluster: Cluster, chart_crds: list[str], namespace: str, tmp_path: Path) -> Iterator[Any]:
    """A Helm release of the chart in `namespace` (set .values, then .install()); uninstalled afterwards."""
    from chart_helpers import Release

    from kubetest import chartlib

    rel = Release(name=f"mo-{uuid.uuid4().hex[:6]}", namespace=namespace, values={}, cluster=cluster, tmp=tmp_path)
    yield rel
    try:
        rel.uninstall()
    except chartlib.HelmError:
        pass

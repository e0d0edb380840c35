"""The operator under test: `kopf.testing.KopfRunner` running model_operator's handlers against
the test control plane, with node pools that match the simulated ones and a PVC artifact store.

Pods it creates that must really run (worker Jobs, Triton) land on the real node `local-0` as
containers from the project's own images (the `images` fixture); GPU and edge pods land on KWOK
nodes, where the scheduler's placement is what counts.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from md_helpers import LOCAL_TOLERATION, MODELS_CLAIM, STORE_CLAIM, make_claim, put_digits


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def operator_config(prometheus_url: str, metrics_port: int, images: dict[str, str]) -> dict[str, Any]:
    return {
        "worker_image": images["worker"],
        "triton_image": images["triton"],
        "artifact_store": {"type": "pvc", "claim": STORE_CLAIM},
        "worker_node_selector": {"node-pool": "local"},
        "worker_tolerations": [LOCAL_TOLERATION],
        "worker_resources": {"requests": {"cpu": "100m", "memory": "256Mi"}},
        "node_pools": {
            "local": {"node_selector": {"node-pool": "local"}, "tolerations": [LOCAL_TOLERATION]},
            "gpu": {
                "node_selector": {"node-pool": "gpu"},
                "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
                "gpu_product": "NVIDIA-H100-80GB-HBM3",
            },
            "edge": {
                "node_selector": {"node-pool": "edge"},
                "tolerations": [{"key": "edge", "operator": "Equal", "value": "true", "effect": "NoSchedule"}],
                "arch": "arm64",
            },
        },
        "default_node_pool": {"cloud": "local", "edge": "edge"},
        # The GPU and arm64 pools are simulated (KWOK): nothing runs there, so the optimization
        # Jobs of every target run on the real node. test_the_worker_runs_on_the_target_pool
        # clears this to show the product's default, the serving pool.
        "benchmark_pools": {"cloud": "local", "edge": "local"},
        "prometheus_url": prometheus_url,
        "prometheus_timeout_seconds": 2.0,
        "prometheus_window": "20s",
        "metrics_port": metrics_port,
        "finalizer_timeout_seconds": 120,
    }


@pytest.fixture(scope="module")
def operator_env(
    cluster: Any, crd_installed: Any, prometheus: Any, images: dict[str, str], tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[dict[str, str]]:
    """Environment for an operator process or KopfRunner: kubeconfig, config file, fast timers.
    KopfRunner runs in this process, so the variables go into os.environ, and come out again
    after each module's tests (other tests read MODEL_OPERATOR_* configuration too)."""
    cfg_dir = tmp_path_factory.mktemp("operator")
    cfg = cfg_dir / "config.yaml"
    cfg.write_text(yaml.safe_dump(operator_config(prometheus.url, free_port(), images)))
    env = {
        "KUBECONFIG": str(cluster.kubeconfig),
        "MODEL_OPERATOR_CONFIG": str(cfg),
        "MODEL_OPERATOR_RECONCILE_INTERVAL_SECONDS": "1",
        "MODEL_OPERATOR_SCALER_TICK_SECONDS": "1",
        # status.scaling.lastPoll moves at least this often (600 s by default): tests watch polls go on.
        "MODEL_OPERATOR_SCALER_HEARTBEAT_SECONDS": "5",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield env
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture
def start_operator(operator_env: dict[str, str]) -> Iterator[Callable[[], Any]]:
    """Start (and on teardown stop) a KopfRunner; call again to simulate a restart."""
    from kopf.testing import KopfRunner

    runners: list[Any] = []

    base = yaml.safe_load(Path(operator_env["MODEL_OPERATOR_CONFIG"]).read_text())

    def start(**overrides: Any) -> Any:
        """`overrides` replace top-level keys of the operator configuration for this run."""
        cfg = {**base, **overrides, "metrics_port": free_port()}
        Path(operator_env["MODEL_OPERATOR_CONFIG"]).write_text(yaml.safe_dump(cfg))
        runner = KopfRunner(
            ["run", "--standalone", "--all-namespaces", "-m", "model_operator.controller.handlers"],
            timeout=60,
        )
        runner.__enter__()
        runners.append(runner)
        return runner

    yield start
    Path(operator_env["MODEL_OPERATOR_CONFIG"]).write_text(yaml.safe_dump(base))
    for runner in runners:
        if runner._thread.is_alive():  # noqa: SLF001 - KopfRunner offers no public "running" flag
            runner.__exit__(None, None, None)
    for runner in runners:
        assert runner.exception is None, runner.exception
        assert runner.exit_code == 0


@pytest.fixture
def models(core_api: Any, namespace: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The models claim holding the digits files, and an empty artifact store claim; the
    directory of the models claim on this machine."""
    path = make_claim(core_api, namespace, MODELS_CLAIM)
    make_claim(core_api, namespace, STORE_CLAIM)
    put_digits(path, tmp_path_factory.getbasetemp())
    return path


@pytest.fixture(scope="module")
def metrics_adapter(cluster: Any, prometheus: Any, operator_env: dict[str, str]) -> Iterator[Any]:
    """prometheus-adapter serving custom.metrics.k8s.io from the session's Prometheus with the
    rules the chart ships (model_operator.scaling.adapter) over the operator's window, registered
    with the aggregation layer and Available; removed again after the module."""
    from kubetest import binaries
    from kubetest.metrics_adapter import NAME, MetricsAdapter
    from model_operator.scaling.adapter import adapter_rules

    try:
        binaries.require([NAME])
    except binaries.BinariesMissing as e:
        binaries.unavailable(str(e))
    window = yaml.safe_load(Path(operator_env["MODEL_OPERATOR_CONFIG"]).read_text())["prometheus_window"]
    adapter = MetricsAdapter(cluster, prometheus.url, adapter_rules(window)).start()
    try:
        yield adapter
    finally:
        adapter.stop()


@pytest.fixture(scope="module")
def keda(cluster: Any) -> Iterator[Any]:
    """KEDA (kubetest.keda): its CRDs of the pinned release, its operator, and its metrics server
    registered as external.metrics.k8s.io and Available; removed again after the module. A
    ModelDeployment with `engine: keda` needs the operator started after this (it asks whether
    keda.sh is served at start, then every minute)."""
    from kubetest import binaries
    from kubetest.keda import OPERATOR, SERVER, Keda

    try:
        binaries.require([OPERATOR, SERVER])
    except binaries.BinariesMissing as e:
        binaries.unavailable(str(e))
    running = Keda(cluster).start()
    try:
        yield running
    finally:
        running.stop()

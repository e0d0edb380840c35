"""Where Triton lands and how the operator reacts to edits, failures and restarts."""

from __future__ import annotations

from typing import Any

import pytest
from md_helpers import (
    GROUP,
    MODELS_CLAIM,
    PLURAL,
    STORE_CLAIM,
    VERSION,
    Load,
    condition,
    create_md,
    digits_md,
    get_md,
    make_claim,
    put_digits,
    service_endpoint,
    stop,
    wait_phase,
)

from kubetest.wait import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def _triton_pod_names(core_api: Any, namespace: str, name: str) -> list[str]:
    """Every Triton pod of the ModelDeployment that still exists, terminating ones included."""
    selector = f"serving.model-operator.io/deployment={name},app.kubernetes.io/component=triton"
    return [p.metadata.name for p in core_api.list_namespaced_pod(namespace, label_selector=selector).items]


@pytest.fixture
def claims(namespace: str, core_api: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    models = make_claim(core_api, namespace, MODELS_CLAIM)
    store = make_claim(core_api, namespace, STORE_CLAIM)
    put_digits(models, tmp_path_factory.getbasetemp())
    return {"models": models, "store": store}


def _jobs(batch_api: Any, namespace: str, name: str) -> list[str]:
    items = batch_api.list_namespaced_job(namespace, label_selector=f"serving.model-operator.io/deployment={name},app.kubernetes.io/component=optimizer").items
    return sorted(j.metadata.name for j in items)


def _pods(core_api: Any, namespace: str, name: str) -> list[Any]:
    return core_api.list_namespaced_pod(namespace, label_selector=f"serving.model-operator.io/deployment={name},app.kubernetes.io/component=triton").items


FAST = {"quantization": {"mode": "none"}}


def test_gpu_and_edge_pools(start_operator: Any, namespace: str, claims: Any, custom_api: Any, core_api: Any) -> None:
    start_operator()
    gpu = digits_md("on-gpu", optimization=FAST)
    gpu["spec"]["serving"] = {"nodePool": "gpu", "gpus": 1, "replicas": 2}
    create_md(custom_api, namespace, gpu)
    edge = digits_md("on-edge", optimization=FAST, target="edge")
    edge["spec"]["serving"] = {"nodePool": "edge", "replicas": 1}
    create_md(custom_api, namespace, edge)

    wait_phase(custom_api, namespace, "on-gpu", "Ready", timeout=300)
    pods = _pods(core_api, namespace, "on-gpu")
    assert len(pods) == 2 and all(p.spec.node_name.startswith("gpu-") for p in pods)
    triton = next(c for c in pods[0].spec.containers if c.name == "triton")
    assert triton.resources.limits["nvidia.com/gpu"] == "1"
    assert pods[0].spec.node_selector == {"node-pool": "gpu", "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert any(t.key == "nvidia.com/gpu" for t in pods[0].spec.tolerations)
    md = get_md(custom_api, namespace, "on-gpu")
    assert md["status"]["ready"] == "2/2"

    wait_phase(custom_api, namespace, "on-edge", "Ready", timeout=300)
    pods = _pods(core_api, namespace, "on-edge")
    assert len(pods) == 1 and pods[0].spec.node_name.startswith("edge-")
    assert pods[0].spec.node_selector["kubernetes.io/arch"] == "arm64"


def _job_pods(core_api: Any, namespace: str, name: str) -> list[Any]:
    selector = f"serving.model-operator.io/deployment={name},app.kubernetes.io/component=optimizer"
    return [p for p in core_api.list_namespaced_pod(namespace, label_selector=selector).items if p.spec.node_name]


def test_the_worker_runs_on_the_target_pool(start_operator: Any, namespace: str, claims: Any, custom_api: Any, core_api: Any) -> None:
    """The product's default (no benchmark pools): each optimization Job goes to the pool that
    will serve its model, so the recipe search times candidates on that hardware. The GPU and
    arm64 pools are simulated here: the scheduler places their Jobs' pods (what this checks), no
    worker runs there. The local pool's Job runs for real and the status says where it measured."""
    start_operator(benchmark_pools={})
    gpu = digits_md("opt-on-gpu", optimization=FAST)
    gpu["spec"]["serving"] = {"nodePool": "gpu", "gpus": 1, "replicas": 1}
    edge = digits_md("opt-on-edge", optimization=FAST, target="edge")
    edge["spec"]["serving"] = {"nodePool": "edge", "replicas": 1}
    for body in (gpu, edge, digits_md("opt-local", optimization=FAST)):
        create_md(custom_api, namespace, body)

    (pod,) = wait_for(lambda: _job_pods(core_api, namespace, "opt-on-gpu"), timeout=120, message="the GPU model's Job pod scheduled")
    assert pod.spec.node_name.startswith("gpu-"), pod.spec.node_name
    assert pod.spec.node_selector == {"node-pool": "gpu", "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert pod.spec.containers[0].resources.limits["nvidia.com/gpu"] == "1"
    (pod,) = wait_for(lambda: _job_pods(core_api, namespace, "opt-on-edge"), timeout=120, message="the edge model's Job pod scheduled")
    assert pod.spec.node_name.startswith("edge-") and pod.spec.node_selector["kubernetes.io/arch"] == "arm64"

    md = wait_phase(custom_api, namespace, "opt-local", "Ready", timeout=300)
    nodes = {p.spec.node_name for p in _job_pods(core_api, namespace, "opt-local")}
    measured = md["status"]["optimization"]["measuredOn"]
    assert measured["node"] in nodes, (measured, nodes)
    assert (measured["pool"], measured["arch"]) == ("local", "x86_64"), measured


def test_too_many_gpus_shows_the_schedulers_reason(start_operator: Any, namespace: str, claims: Any, custom_api: Any) -> None:
    start_operator()
    body = digits_md("greedy", optimization=FAST)
    body["spec"]["serving"] = {"nodePool": "gpu", "gpus": 16, "replicas": 1}
    create_md(custom_api, namespace, body)
    md = wait_phase(custom_api, namespace, "greedy", "Degraded", timeout=300)
    degraded = condition(md, "Degraded")
    assert degraded["status"] == "True" and degraded["reason"] == "Unschedulable"
    assert "nvidia.com/gpu" in degraded["message"]


def test_corrupt_model_fails_with_the_workers_reason(start_operator: Any, namespace: str, claims: Any, custom_api: Any, apps_api: Any) -> None:
    (claims["models"] / "corrupt.pt").write_bytes(b"this is not a model")
    start_operator()
    body = digits_md("corrupt")
    body["spec"]["model"]["uri"] = "pvc://models/corrupt.pt"
    create_md(custom_api, namespace, body)
    md = wait_phase(custom_api, namespace, "corrupt", "Failed", timeout=300)
    failed = condition(md, "OptimizationSucceeded")
    assert failed["status"] == "False" and failed["reason"] == "InvalidInput"  # exit 2: not retried
    assert "corrupt.pt" in failed["message"], failed["message"]
    assert not apps_api.list_namespaced_deployment(namespace).items


def test_edits_restart_and_scale(
    start_operator: Any, namespace: str, claims: Any, custom_api: Any, batch_api: Any, core_api: Any, kubectl: Any
) -> None:
    runner = start_operator()
    create_md(custom_api, namespace, digits_md("edited", optimization=FAST))
    # Restart the operator while the Job runs: the new one must adopt it, not start another.
    wait_for(lambda: _jobs(batch_api, namespace, "edited"), timeout=60, message="first Job created")
    stop(runner)
    start_operator()
    md = wait_phase(custom_api, namespace, "edited", "Ready", timeout=300)
    first_jobs = _jobs(batch_api, namespace, "edited")
    assert len(first_jobs) == 1

    # Replicas only: no new Job, more pods.
    kubectl("scale", "md", "edited", "-n", namespace, "--replicas=2")
    wait_for(lambda: get_md(custom_api, namespace, "edited")["status"].get("ready") == "2/2", timeout=180, message="2/2 ready")
    assert _jobs(batch_api, namespace, "edited") == first_jobs

    # Quantization changed: a second Job, a new artifact.
    custom_api.patch_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, "edited", {"spec": {"optimization": {"quantization": {"mode": "dynamic-int8"}}}}
    )
    wait_for(lambda: len(_jobs(batch_api, namespace, "edited")) == 2, timeout=60, message="second Job for the new spec")
    old_hash = md["status"]["artifact"]["specHash"]
    wait_for(
        lambda: (s := get_md(custom_api, namespace, "edited")["status"])["artifact"]["specHash"] != old_hash and s["phase"] == "Ready",
        timeout=300, message="new artifact rolled out",
    )

    # Scaling down under load through the Service: the removed pod keeps answering through its
    # preStop pause while kube-proxy drops it, so no client sees a refused connection.
    wait_for(lambda: get_md(custom_api, namespace, "edited")["status"].get("ready") == "2/2", timeout=180, message="2/2 ready again")
    pod = core_api.read_namespaced_pod(_triton_pod_names(core_api, namespace, "edited")[0], namespace)
    triton = next(c for c in pod.spec.containers if c.name == "triton")
    assert triton.lifecycle.pre_stop.sleep.seconds > 0, triton.lifecycle
    with Load(service_endpoint(core_api, namespace, "edited-triton"), seconds=180, model="edited", pause=0.005) as load:
        wait_for(lambda: load.sent > 20, timeout=60, message="requests answered through the Service")
        kubectl("scale", "md", "edited", "-n", namespace, "--replicas=1")
        wait_for(lambda: len(_triton_pod_names(core_api, namespace, "edited")) == 1, timeout=120, interval=0.5,
                 message="one Triton pod left, the other gone")
        after = load.sent
        wait_for(lambda: load.sent > after + 20, timeout=60, message="requests answered after the pod was gone")
    assert load.failed == 0, (load.sent, load.failed, load.errors)

"""The digits example end to end on the real control plane: apply -> a Job runs the real worker
image on the real node -> the artifact lands in the store -> a Triton Deployment (the test Triton
image, the worker image's `assemble` init container) serves it -> Ready with the endpoint ->
Triton answers like the original model through the Service -> delete -> all gone."""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException
from md_helpers import (
    MODELS_CLAIM,
    STORE_CLAIM,
    agreement_with_original,
    artifacts_left,
    claim_mounts,
    condition,
    create_md,
    digits_md,
    get_md,
    make_claim,
    put_digits,
    ready_triton_pods,
    service_endpoint,
    wait_phase,
)

from kubetest.wait import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_digits_end_to_end(
    start_operator: Any, namespace: str, custom_api: Any, core_api: Any, apps_api: Any, batch_api: Any, kubectl: Any,
    images: dict[str, str], tmp_path_factory: pytest.TempPathFactory,
) -> None:
    cache = tmp_path_factory.getbasetemp()
    models = make_claim(core_api, namespace, MODELS_CLAIM)
    store = make_claim(core_api, namespace, STORE_CLAIM)
    put_digits(models, cache)
    start_operator()
    create_md(custom_api, namespace, digits_md("digits"))

    md = wait_phase(custom_api, namespace, "digits", "Ready", timeout=420)
    status = md["status"]
    assert condition(md, "Available")["status"] == "True"
    assert condition(md, "OptimizationSucceeded")["status"] == "True"
    assert status["readyReplicas"] == 1 and status["ready"] == "1/1" and status["observedGeneration"] == md["metadata"]["generation"]
    assert status["endpoint"]["http"] == f"http://digits-triton.{namespace}.svc:8000"
    artifact = status["artifact"]
    assert len(artifact["sha256"]) == 64 and artifact["format"] == "onnx"
    assert artifact["sizeBytes"] < artifact["originalSizeBytes"]
    assert status["optimization"]["qualityAfter"] and status["optimization"]["latencyMsAfter"] is not None
    # The deletion finalizer is on the object; kopf's copy of the last handled spec is not (no
    # handler reads it, and writing it cost a PATCH per object).
    assert md["metadata"]["finalizers"] == ["serving.model-operator.io/finalizer"]
    assert not [k for k in md["metadata"].get("annotations") or {} if k.startswith("serving.model-operator.io/")], md["metadata"]

    # The artifact is in the store, complete.
    spec_hash = artifact["specHash"]
    artifact_dir = store / namespace / "digits" / spec_hash
    assert (artifact_dir / "COMPLETE").exists() and (artifact_dir / "report.json").exists()

    # Exactly one Job ran for this spec.
    jobs = batch_api.list_namespaced_job(namespace, label_selector="serving.model-operator.io/deployment=digits").items
    assert [j.metadata.name for j in jobs if j.metadata.labels.get("app.kubernetes.io/component") == "optimizer"] == [f"digits-opt-{spec_hash}"]

    # The worker ran from the worker image; its log is where a user looks first.
    job_log = kubectl("logs", f"job/digits-opt-{spec_hash}", "-n", namespace).stdout
    assert job_log.strip(), "kubectl logs of the optimization Job is empty"

    # Triton on the real node, from the images the operator was configured with, answers with the
    # original model's classes through the Service.
    pods = ready_triton_pods(core_api, namespace, "digits")
    assert len(pods) == 1 and pods[0].spec.node_name == "local-0"
    assert {c.image for c in pods[0].spec.containers} >= {images["triton"]}
    assert {c.image for c in pods[0].spec.init_containers} == {images["worker"]}
    assert all(c.ready for c in pods[0].status.container_statuses)
    agreement = agreement_with_original(service_endpoint(core_api, namespace, "digits-triton"), cache)
    assert agreement >= 0.9, agreement

    # The store claim is mounted only at this MD's own directory, writable by the worker alone:
    # the worker wrote the artifact through that sub-path and Triton's init container read it.
    mounts = claim_mounts(core_api, namespace, STORE_CLAIM)
    worker = [p for p in mounts if p.startswith(f"digits-opt-{spec_hash}")]
    assert worker and pods[0].metadata.name in mounts, mounts
    for pod, pod_mounts in mounts.items():
        assert pod_mounts and {sub for sub, _ in pod_mounts} == {f"{namespace}/digits"}, (pod, pod_mounts)
        assert all(read_only == (pod not in worker) for _, read_only in pod_mounts), (pod, pod_mounts)

    # Delete: children by garbage collection, artifacts by the finalizer.
    custom_api.delete_namespaced_custom_object("serving.model-operator.io", "v1alpha1", namespace, "modeldeployments", "digits")

    def gone() -> bool:
        try:
            get_md(custom_api, namespace, "digits")
            return False
        except ApiException as e:  # only a 404 is "deleted": an unreachable API server is not
            if e.status == 404:
                return True
            raise

    wait_for(gone, timeout=180, message="ModelDeployment deleted (finalizer done)")
    wait_for(lambda: not apps_api.list_namespaced_deployment(namespace).items, timeout=120, message="Deployments garbage-collected")
    wait_for(lambda: not core_api.list_namespaced_service(namespace).items, timeout=120, message="Services garbage-collected")
    wait_for(
        lambda: not [j for j in batch_api.list_namespaced_job(namespace).items if "opt" in j.metadata.name],
        timeout=120, message="optimization Jobs garbage-collected",
    )
    assert not artifacts_left(store, namespace, "digits"), "artifacts left in the store"

"""The digits example end to end with the operator installed by the chart, as a user installs it:
the chart's Deployment runs the operator image (two replicas, kopf peering) on the real node,
authenticated only by its ServiceAccount's token; the real worker Job, the real Triton pods,
status, Events, the finalizer's cleanup Job. Any permission the chart's RBAC lacks shows up as a
403 in the operator's log (read with `kubectl logs`, as a user would) or as a flow that never
finishes."""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException
from md_helpers import (
    LOCAL_TOLERATION,
    MODELS_CLAIM,
    STORE_CLAIM,
    agreement_with_original,
    artifacts_left,
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

from kubetest.refusals import refused_lines
from kubetest.wait import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

SMALL = {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "4Gi"}}


def image_values(ref: str) -> dict[str, str]:
    repository, tag = ref.rsplit(":", 1)
    return {"repository": repository, "tag": tag}


def chart_values(watched: str, prometheus_url: str, images: dict[str, str]) -> dict[str, Any]:
    """The chart's values for this cluster: the images from the local registry, the operator's
    pods and the `local` pool on the real node, the PVC artifact store, the test Prometheus."""
    return {
        "watchNamespaces": [watched],
        "image": image_values(images["operator"]),
        "operator": {"nodeSelector": {"node-pool": "local"}, "tolerations": [LOCAL_TOLERATION], "finalizerTimeoutSeconds": 120,
                     "reconcileIntervalSeconds": 2,
                     # The test Prometheus finds pods by annotation (a cluster with the Prometheus
                     # operator uses the chart's ServiceMonitor instead).
                     "podAnnotations": {"prometheus.io/scrape": "true", "prometheus.io/port": "9090"}},
        "worker": {"image": image_values(images["worker"]), "nodeSelector": {"node-pool": "local"}, "tolerations": [LOCAL_TOLERATION],
                   "resources": SMALL},
        "triton": {"image": image_values(images["triton"])},
        "artifactStore": {"type": "pvc", "pvc": {"claim": STORE_CLAIM}},
        "nodePools": {"local": {"nodeSelector": {"node-pool": "local"}, "tolerations": [LOCAL_TOLERATION], "resources": SMALL}},
        "defaultNodePool": {"cloud": "local", "edge": "local"},
        "prometheus": {"url": prometheus_url, "timeoutSeconds": 2, "window": "20s"},
    }


def operator_logs(kubectl: Any, release: Any) -> dict[str, str]:
    """Each operator pod's log, by pod name, through the kubelet (`kubectl logs`)."""
    pods = kubectl("get", "pods", "-n", release.namespace, "-l", f"app.kubernetes.io/instance={release.name}",
                   "-o", "jsonpath={.items[*].metadata.name}").stdout.split()
    return {p: kubectl("logs", p, "-n", release.namespace, check=False).stdout for p in pods}


def test_digits_flow_with_the_chart_installed_operator(
    release: Any, watched: str, prometheus: Any, images: dict[str, str], kubectl: Any, custom_api: Any, core_api: Any,
    apps_api: Any, batch_api: Any, tmp_path_factory: pytest.TempPathFactory,
) -> None:
    cache = tmp_path_factory.getbasetemp()
    models = make_claim(core_api, watched, MODELS_CLAIM)
    store = make_claim(core_api, watched, STORE_CLAIM)
    put_digits(models, cache)
    release.values = chart_values(watched, prometheus.url, images)
    release.install()  # --wait: both operator pods Ready (liveness and readiness through the kubelet)

    pods = core_api.list_namespaced_pod(release.namespace, label_selector=f"app.kubernetes.io/instance={release.name}").items
    assert len(pods) == 2 and {p.spec.node_name for p in pods} == {"local-0"}, [(p.metadata.name, p.spec.node_name) for p in pods]
    for pod in pods:
        assert pod.spec.containers[0].image == images["operator"]
        assert all(c.ready for c in pod.status.container_statuses), pod.status.container_statuses
    # A user's first look: the Deployment's log, through the kubelet.
    first = kubectl("logs", f"deploy/{release.fullname}", "-n", release.namespace).stdout
    assert "kopf" in first.lower() or "model-operator" in first.lower(), first[-2000:]

    create_md(custom_api, watched, digits_md("digits"))
    try:
        md = wait_phase(custom_api, watched, "digits", "Ready", timeout=420)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\noperator logs:\n{operator_logs(kubectl, release)}") from None
    assert condition(md, "OptimizationSucceeded")["status"] == "True"
    assert condition(md, "Available")["status"] == "True"
    artifact = md["status"]["artifact"]
    assert (store / watched / "digits" / artifact["specHash"] / "COMPLETE").exists()

    # The worker and Triton pods carry the chart's workload identity and security context.
    pods = ready_triton_pods(core_api, watched, "digits")
    assert len(pods) == 1 and pods[0].spec.node_name == "local-0"
    sc = pods[0].spec.security_context
    assert sc.run_as_non_root and sc.run_as_user == 1000 and sc.seccomp_profile.type == "RuntimeDefault"
    for c in [*pods[0].spec.init_containers, *pods[0].spec.containers]:
        assert c.security_context.read_only_root_filesystem and c.security_context.capabilities.drop == ["ALL"], c.name

    agreement = agreement_with_original(service_endpoint(core_api, watched, "digits-triton"), cache)
    assert agreement >= 0.9, agreement

    # The operator's per-object series as the dashboard and alerts read them, scraped by Prometheus
    # from the operator's pods: the active replica exports them, the standby nothing.
    def values(got: dict[str, list[dict[str, Any]]], name: str) -> list[float]:
        return [float(s["value"][1]) for s in got[name]]

    def available(got: dict[str, list[dict[str, Any]]]) -> dict[str, float]:
        return {s["metric"]["status"]: float(s["value"][1]) for s in got["model_operator_condition"] if s["metric"]["type"] == "Available"}

    def operator_series() -> dict[str, list[dict[str, Any]]] | None:
        got = {q: prometheus.query(q + '{modeldeployment="digits"}') for q in (
            "model_operator_desired_replicas", "model_operator_ready_replicas", "model_operator_condition")}
        # The series appear with the first reconcile (0 ready) and follow the status: wait for the
        # values a Ready object has, then check that nothing else is there.
        return got if values(got, "model_operator_ready_replicas") == [1.0] and available(got).get("True") == 1.0 else None

    series = wait_for(operator_series, timeout=120, interval=3, message="digits' ready replica and Available=True in Prometheus")
    assert values(series, "model_operator_desired_replicas") == [1.0], series
    assert available(series) == {"True": 1.0, "False": 0.0, "Unknown": 0.0}, series["model_operator_condition"]
    assert len({s["metric"]["pod"] for s in series["model_operator_condition"]}) == 1, series["model_operator_condition"]

    # Events were written under the ServiceAccount's identity.
    reasons = {e.reason for e in core_api.list_namespaced_event(watched).items if e.involved_object.name == "digits"}
    assert "JobSucceeded" in reasons, reasons

    # Delete: the finalizer's cleanup Job removes the artifacts, then the object goes.
    custom_api.delete_namespaced_custom_object("serving.model-operator.io", "v1alpha1", watched, "modeldeployments", "digits")

    def gone() -> bool:
        try:
            get_md(custom_api, watched, "digits")
            return False
        except ApiException as e:  # only a 404 is "deleted": an unreachable API server is not
            if e.status == 404:
                return True
            raise

    wait_for(gone, timeout=180, message="ModelDeployment deleted (finalizer done)")
    wait_for(lambda: not apps_api.list_namespaced_deployment(watched).items, timeout=120, message="Deployments garbage-collected")
    assert not artifacts_left(store, watched, "digits"), "artifacts left in the store"
    logs = operator_logs(kubectl, release)
    assert any("digits" in text for text in logs.values()), logs
    for pod, text in logs.items():
        assert not refused_lines(text), f"{pod} was refused something:\n{text[-4000:]}"
    restarts = {p.metadata.name: sum(c.restart_count for c in p.status.container_statuses)
                for p in core_api.list_namespaced_pod(release.namespace, label_selector=f"app.kubernetes.io/instance={release.name}").items}
    assert set(restarts.values()) == {0}, restarts

"""A child the API server refuses reaches the ModelDeployment's status: Progressing=False with
reason ApplyFailed naming the kind, the name and the server's message, a Warning Event, and a
retry with back-off that succeeds once the refusal is lifted."""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from md_helpers import MODELS_CLAIM, STORE_CLAIM, condition, create_md, digits_md, get_md, make_claim, put_digits, wait_phase

from kubetest.wait import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

FAST = {"quantization": {"mode": "none"}}


def _apply_failed(custom_api: Any, namespace: str, name: str, *needles: str) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        md = get_md(custom_api, namespace, name)
        cond = condition(md, "Progressing")
        return cond if cond.get("reason") == "ApplyFailed" and all(n in cond.get("message", "") for n in needles) else None

    try:
        return wait_for(check, timeout=240, interval=1, message=f"{name}: Progressing=False ApplyFailed")
    except Exception:
        raise AssertionError(f"{name}: no ApplyFailed; status {get_md(custom_api, namespace, name).get('status')}") from None


def _warning_event(core_api: Any, namespace: str, name: str, reason: str) -> Any:
    def check() -> Any:
        events = core_api.list_namespaced_event(namespace, field_selector=f"involvedObject.name={name}").items
        return next((e for e in events if e.reason == reason and e.type == "Warning"), None)

    return wait_for(check, timeout=30, message=f"Warning Event {reason} on {name}")


def test_a_quota_refusing_the_triton_deployment(start_operator: Any, namespace: str, core_api: Any, custom_api: Any,
                                                tmp_path_factory: pytest.TempPathFactory) -> None:
    models = make_claim(core_api, namespace, MODELS_CLAIM)
    make_claim(core_api, namespace, STORE_CLAIM)
    put_digits(models, tmp_path_factory.getbasetemp())
    core_api.create_namespaced_resource_quota(namespace, client.V1ResourceQuota(
        metadata=client.V1ObjectMeta(name="no-deployments"), spec=client.V1ResourceQuotaSpec(hard={"count/deployments.apps": "0"})))
    wait_for(lambda: (core_api.read_namespaced_resource_quota("no-deployments", namespace).status.hard or {}).get("count/deployments.apps") == "0",
             timeout=60, message="quota counted by the controller")
    start_operator()
    create_md(custom_api, namespace, digits_md("quota", optimization=FAST))

    cond = _apply_failed(custom_api, namespace, "quota", "Deployment quota-triton", "exceeded quota")
    assert cond["status"] == "False"
    md = get_md(custom_api, namespace, "quota")
    assert condition(md, "ArtifactReady")["status"] == "True", "the artifact was made; only its Deployment is refused"
    assert "count/deployments.apps" in _warning_event(core_api, namespace, "quota", "ApplyFailed").message

    core_api.delete_namespaced_resource_quota("no-deployments", namespace)
    md = wait_phase(custom_api, namespace, "quota", "Ready", timeout=300)  # retried after its back-off
    assert condition(md, "Progressing")["reason"] == "RolloutComplete"


def _policy(namespace: str) -> tuple[dict[str, Any], dict[str, Any]]:
    name = f"no-optimizer-jobs-{namespace}"
    policy = {
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy", "metadata": {"name": name},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {"resourceRules": [
                {"apiGroups": ["batch"], "apiVersions": ["v1"], "operations": ["CREATE", "UPDATE"], "resources": ["jobs"]}]},
            "validations": [{
                "expression": "!has(object.metadata.labels) || !('app.kubernetes.io/component' in object.metadata.labels)"
                              " || object.metadata.labels['app.kubernetes.io/component'] != 'optimizer'",
                "message": "optimization Jobs are not allowed in this namespace",
            }],
        },
    }
    binding = {
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicyBinding", "metadata": {"name": name},
        "spec": {"policyName": name, "validationActions": ["Deny"],
                 "matchResources": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}}}},
    }
    return policy, binding


def test_an_admission_policy_refusing_the_job(start_operator: Any, namespace: str, core_api: Any, batch_api: Any, custom_api: Any,
                                              kube: Any) -> None:
    from kubernetes.dynamic import DynamicClient

    dyn = DynamicClient(kube)
    policy, binding = _policy(namespace)
    vap = dyn.resources.get(api_version="admissionregistration.k8s.io/v1", kind="ValidatingAdmissionPolicy")
    vapb = dyn.resources.get(api_version="admissionregistration.k8s.io/v1", kind="ValidatingAdmissionPolicyBinding")
    vap.create(body=policy)
    vapb.create(body=binding)
    try:
        probe = client.V1Job(
            metadata=client.V1ObjectMeta(name="probe", labels={"app.kubernetes.io/component": "optimizer"}),
            spec=client.V1JobSpec(template=client.V1PodTemplateSpec(spec=client.V1PodSpec(
                restart_policy="Never", containers=[client.V1Container(name="c", image="busybox")]))))

        def refused() -> bool:
            try:
                batch_api.create_namespaced_job(namespace, probe, dry_run="All")
            except ApiException as exc:
                return exc.status in (403, 422) and "not allowed" in (exc.body or "")
            return False

        wait_for(refused, timeout=60, message="the admission policy is in force")
        start_operator()
        create_md(custom_api, namespace, digits_md("refused", optimization=FAST))
        cond = _apply_failed(custom_api, namespace, "refused", "Job refused-opt-", "optimization Jobs are not allowed in this namespace")
        assert cond["status"] == "False"
        md = get_md(custom_api, namespace, "refused")
        opt = condition(md, "OptimizationSucceeded")
        assert opt["status"] == "Unknown" and opt["reason"] == "ApplyFailed", "no JobStarted for a Job that was never created"
        assert not batch_api.list_namespaced_job(namespace).items
        _warning_event(core_api, namespace, "refused", "ApplyFailed")

        vapb.delete(name=binding["metadata"]["name"])
        wait_for(lambda: batch_api.list_namespaced_job(namespace).items, timeout=120, message="the Job created after the back-off")
    finally:
        for res, obj in ((vapb, binding), (vap, policy)):
            try:
                res.delete(name=obj["metadata"]["name"])
            except ApiException as exc:
                if exc.status != 404:
                    raise

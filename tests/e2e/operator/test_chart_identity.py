"""The digits example end to end with the operator installed by the chart and authenticated only
as the chart's ServiceAccount: the real worker Job, the real Triton pods, status, Events, the
finalizer's cleanup Job. Any permission the chart's RBAC lacks shows up as a 403 in the
operator's log or as a flow that never finishes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from kubernetes.client.exceptions import ApiException
import torch

from chart_helpers import OperatorProcess, base_values, http_ok
from md_helpers import (
    LOCAL_TOLERATION, MODELS_CLAIM, STORE_CLAIM, condition, create_md, digits_files, digits_md, get_md, make_claim, put_digits,
    ready_triton_pods, wait_phase,
)
from kubetest.wait import wait_for
from model_operator.triton.client import infer

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

SMALL = {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "4Gi"}}


def chart_values(watched: str, prometheus_url: str) -> dict[str, Any]:
    """The chart's values for this cluster: the local pod runner's node as the `local` pool, the
    PVC artifact store, the test Prometheus."""
    return {
        **base_values(watched),
        "operator": {"nodeSelector": {"node-pool": "cpu"}, "finalizerTimeoutSeconds": 120},
        "artifactStore": {"type": "pvc", "pvc": {"claim": STORE_CLAIM}},
        "worker": {"nodeSelector": {"node-pool": "local"}, "tolerations": [LOCAL_TOLERATION], "resources": SMALL},
        "nodePools": {"local": {"nodeSelector": {"node-pool": "local"}, "tolerations": [LOCAL_TOLERATION], "resources": SMALL}},
        "defaultNodePool": {"cloud": "local", "edge": "local"},
        "prometheus": {"url": prometheus_url, "timeoutSeconds": 2, "window": "20s"},
    }


def test_digits_flow_as_the_chart_service_account(
    release: Any, watched: str, prometheus: Any, custom_api: Any, core_api: Any, apps_api: Any, batch_api: Any,
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory,
) -> None:
    cache = tmp_path_factory.getbasetemp()
    models = make_claim(core_api, watched, MODELS_CLAIM)
    store = make_claim(core_api, watched, STORE_CLAIM)
    put_digits(models, cache)
    release.values = chart_values(watched, prometheus.url)
    release.install()

    op = OperatorProcess(release, "operator-0", tmp_path)
    with op:
        wait_for(lambda: http_ok(f"http://127.0.0.1:{op.liveness}/healthz") or not op.alive(), timeout=60,
                 message="the operator's liveness endpoint")
        assert op.alive(), op.log()
        create_md(custom_api, watched, digits_md("digits"))
        try:
            md = wait_phase(custom_api, watched, "digits", "Ready", timeout=420)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\noperator log:\n{op.log()[-4000:]}") from None
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

        data = np.load(digits_files(cache) / "validation.npz")
        key = next(k for k in data.files if k not in ("labels", "targets"))
        x = data[key][:16].astype(np.float32)
        original = torch.jit.load(str(digits_files(cache) / "digits.pt")).eval()
        with torch.no_grad():
            expected = original(torch.from_numpy(x)).argmax(1).numpy()
        answer = infer(f"{pods[0].status.pod_ip}:8000", "digits", {"input": x}, ["logits"])
        assert float((answer["logits"].argmax(1) == expected).mean()) >= 0.9

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
        assert not (store / watched / "digits").exists(), "artifacts left in the store"
        assert op.alive(), op.log()[-4000:]
    log = op.log()
    for marker in ("403", "Forbidden", "forbidden"):
        assert marker not in log, f"the operator was refused something:\n{log[-4000:]}"

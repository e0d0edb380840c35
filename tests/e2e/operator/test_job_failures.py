"""Failures the worker reports by exit code: the Job's podFailurePolicy fails it at once on 2
(bad input) and 3 (quality gate rejected), with no retry, and the MD says which it was."""

from __future__ import annotations

from typing import Any

import pytest
from md_helpers import MODELS_CLAIM, STORE_CLAIM, condition, create_md, digits_md, make_claim, put_digits, wait_phase

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def _worker_job(batch_api: Any, namespace: str, name: str) -> Any:
    jobs = batch_api.list_namespaced_job(
        namespace, label_selector=f"serving.model-operator.io/deployment={name},app.kubernetes.io/component=optimizer").items
    assert len(jobs) == 1, [j.metadata.name for j in jobs]
    return jobs[0]


def test_bad_input_and_a_rejected_gate_fail_at_once(start_operator: Any, namespace: str, core_api: Any, batch_api: Any,
                                                    custom_api: Any, tmp_path_factory: pytest.TempPathFactory) -> None:
    models = make_claim(core_api, namespace, MODELS_CLAIM)
    make_claim(core_api, namespace, STORE_CLAIM)
    put_digits(models, tmp_path_factory.getbasetemp())
    (models / "corrupt.pt").write_bytes(b"this is not a model")
    start_operator(job_backoff_limit=3)
    gated = digits_md("gated", optimization={
        "pruning": {"method": "magnitude", "sparsity": 0.95}, "qualityGate": {"maxTop1Drop": 0.001}})
    create_md(custom_api, namespace, gated)
    corrupt = digits_md("corrupt")
    corrupt["spec"]["model"]["uri"] = "pvc://models/corrupt.pt"
    create_md(custom_api, namespace, corrupt)

    cases = (("gated", "QualityGateRejected", "maxTop1Drop"), ("corrupt", "InvalidInput", "corrupt.pt"))
    for name, reason, needle in cases:
        md = wait_phase(custom_api, namespace, name, "Failed", timeout=300)
        cond = condition(md, "OptimizationSucceeded")
        assert (cond["status"], cond["reason"]) == ("False", reason), cond
        assert needle in cond["message"], cond["message"]
        job = _worker_job(batch_api, namespace, name)
        failed = next(c for c in job.status.conditions if c.type == "Failed" and c.status == "True")
        assert failed.reason == "PodFailurePolicy", failed
        assert job.status.failed == 1, "a deterministic failure is not retried (backoffLimit 3)"
    gated_md = wait_phase(custom_api, namespace, "gated", "Failed", timeout=10)
    candidates = gated_md["status"]["optimization"]["candidates"]
    assert candidates and not any(c["passed"] for c in candidates)
    assert "top-1 dropped" in condition(gated_md, "OptimizationSucceeded")["message"]

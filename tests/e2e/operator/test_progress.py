"""While the optimization Job runs, status.optimization.progress (and the Progress column of
`kubectl get md`) follows the worker: its step and candidate change during one run."""

from __future__ import annotations

from typing import Any

import pytest
from md_helpers import MODELS_CLAIM, STORE_CLAIM, create_md, digits_md, get_md, make_claim, put_digits, wait_phase

from kubetest.wait import WaitTimeout, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

SEARCH = {
    "search": {"enabled": True, "maxCandidates": 6},
    "qualityGate": {"maxTop1Drop": 0.05},
}


def test_progress_changes_during_a_run(start_operator: Any, namespace: str, core_api: Any, custom_api: Any, kubectl: Any,
                                      tmp_path_factory: pytest.TempPathFactory) -> None:
    models = make_claim(core_api, namespace, MODELS_CLAIM)
    make_claim(core_api, namespace, STORE_CLAIM)
    put_digits(models, tmp_path_factory.getbasetemp())
    # A quarter of a core (a CPU limit the kubelet enforces): the worker's steps take seconds each,
    # long enough for the operator's 1 s reconcile to see several of them.
    from model_operator.controller.handlers import RECONCILE_INTERVAL

    assert RECONCILE_INTERVAL == 1, f"the in-process operator reconciles every {RECONCILE_INTERVAL}s, not 1s (imported too early?)"
    start_operator(worker_resources={"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"cpu": "250m"}})
    body = digits_md("watched", optimization=SEARCH)
    body["spec"]["data"]["calibration"] = {"uri": "pvc://models/calibration.npz", "samples": 64}
    create_md(custom_api, namespace, body)

    seen: list[str] = []

    def progressed() -> bool:
        status = get_md(custom_api, namespace, "watched").get("status") or {}
        summary = ((status.get("optimization") or {}).get("progress") or {}).get("summary")
        if summary and (not seen or seen[-1] != summary):
            seen.append(summary)
        # Two different positions of the worker (not only the elapsed time) were shown, one of
        # them inside the candidate search.
        return len({s.rsplit(",", 1)[0] for s in seen}) >= 2 and any("candidates" in s for s in seen)

    try:
        wait_for(progressed, timeout=300, interval=0.5, message="status.optimization.progress changes during the run")
    except WaitTimeout as exc:
        status = get_md(custom_api, namespace, "watched").get("status") or {}
        raise AssertionError(f"{exc}; seen: {seen}; conditions: {status.get('conditions')}") from None
    column = kubectl("get", "md", "watched", "-n", namespace, "-o", "custom-columns=P:.status.optimization.progress.summary",
                     "--no-headers").stdout.strip()
    assert column.startswith("step ") or column == "<none>", column  # the run may have ended since
    md = wait_phase(custom_api, namespace, "watched", "Ready", timeout=600)
    assert "progress" not in md["status"]["optimization"], "a finished run shows its result, not its progress"
    assert any("candidates" in s for s in seen), seen

"""Health, canary and rollback on the real stack: Triton pods on the local pod runner, the real
Prometheus scraping them, the operator reading both.

- a canary whose model returns errors is rolled back, and the stable track keeps serving with
  no failed request;
- a steady fleet whose error ratio breaks monitoring.maxErrorRatio is Degraded, and recovers;
- the golden-set probe catches a served model whose answers changed;
- an oscillating load makes the fleet scale up once, never flap down and up.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from kubetest.wait import wait_for
from md_helpers import (
    GROUP, MODELS_CLAIM, PLURAL, STORE_CLAIM, VERSION, Load, condition, create_md, digits_md, drifted_copy, erroring_digits,
    get_md, make_claim, pod_endpoints, put_digits, ready_triton_pods, wait_phase,
)

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ONNX_MODEL = {
    "uri": "pvc://models/digits.onnx",
    "format": "onnx",
    "inputs": [{"name": "input", "dtype": "float32", "shape": [-1, 1, 8, 8]}],
    "outputs": [{"name": "logits", "dtype": "float32", "shape": [-1, 10]}],
}
AS_IS = {"quantization": {"mode": "none"}}


@pytest.fixture
def models(core_api: Any, namespace: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = make_claim(core_api, namespace, MODELS_CLAIM)
    make_claim(core_api, namespace, STORE_CLAIM)
    put_digits(path, tmp_path_factory.getbasetemp())
    erroring_digits(path / "digits.onnx", path / "digits-bad.onnx")
    return path


def patch_spec(custom_api: Any, namespace: str, name: str, spec: dict[str, Any]) -> None:
    custom_api.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name, {"spec": spec})


def events(core_api: Any, namespace: str, name: str, reason: str) -> list[Any]:
    return [e for e in core_api.list_namespaced_event(namespace).items if e.involved_object.name == name and e.reason == reason]


def test_canary_with_errors_is_rolled_back_and_stable_keeps_serving(
    models: Path, start_operator: Any, namespace: str, custom_api: Any, core_api: Any, apps_api: Any, prometheus: Any,
) -> None:
    start_operator()
    rollout = {"strategy": "canary", "canary": {"weight": 50, "analysisSeconds": 120, "maxErrorRatio": 0.05}}
    create_md(custom_api, namespace, digits_md("canary", model=ONNX_MODEL, optimization=AS_IS, rollout=rollout))
    md = wait_phase(custom_api, namespace, "canary", "Ready", timeout=300)
    stable_revision = md["status"]["rollout"]["stable"]["revision"]
    stable = pod_endpoints(core_api, namespace, "canary", "stable")
    assert len(stable) == 1
    wait_for(lambda: prometheus.query(f'up{{namespace="{namespace}"}}'), timeout=60, message="Triton scraped")

    # Clients keep using the stable pod through the whole canary, as they would through the Service.
    with Load(stable, seconds=400, pause=0.05, model="canary") as stable_load:
        patch_spec(custom_api, namespace, "canary", {"model": {**ONNX_MODEL, "uri": "pvc://models/digits-bad.onnx"}})
        canary = wait_for(lambda: pod_endpoints(core_api, namespace, "canary", "canary"), timeout=300, interval=1,
                          message="the canary pod Ready")
        md = get_md(custom_api, namespace, "canary")
        assert md["status"]["rollout"]["canary"]["revision"] != stable_revision
        assert condition(md, "RolledBack")["reason"] == "Analysing"
        # The canary's share of traffic: requests its model cannot answer.
        with Load(canary, seconds=300, scale=50.0, pause=0.05, model="canary") as canary_load:
            md = wait_for(lambda: condition(m := get_md(custom_api, namespace, "canary"), "RolledBack").get("status") == "True" and m,
                          timeout=240, interval=1, message="RolledBack=True")
        assert canary_load.failed > 0 and canary_load.sent == 0, (canary_load.sent, canary_load.errors[-3:])
        rolled = condition(md, "RolledBack")
        assert rolled["reason"] == "ErrorRatioBreached", rolled
        assert "error ratio" in rolled["message"] and stable_revision in rolled["message"]
        assert md["status"]["rollout"]["stable"]["revision"] == stable_revision
        assert md["status"]["rollout"]["failedRevisions"] and "canary" not in md["status"]["rollout"]
        wait_for(lambda: events(core_api, namespace, "canary", "RolledBack"), timeout=30, message="the RolledBack Event")
        wait_for(lambda: not [d for d in apps_api.list_namespaced_deployment(namespace).items if d.metadata.name.endswith("-canary")],
                 timeout=60, message="the canary Deployment removed")
        # The stable track kept serving afterwards too.
        sent_before = stable_load.sent
        wait_for(lambda: stable_load.sent > sent_before + 20, timeout=60, message="more answers from the stable pod")
    assert stable_load.failed == 0 and stable_load.sent > 100, (stable_load.sent, stable_load.errors)
    md = wait_phase(custom_api, namespace, "canary", "Ready", timeout=60)
    assert md["spec"]["model"]["uri"].endswith("digits-bad.onnx")  # the spec is the user's; status says what serves


def test_error_ratio_above_the_objective_degrades_and_recovers(
    models: Path, start_operator: Any, namespace: str, custom_api: Any, core_api: Any, prometheus: Any,
) -> None:
    start_operator(health_interval_seconds=2)
    bad_model = {**ONNX_MODEL, "uri": "pvc://models/digits-bad.onnx"}
    create_md(custom_api, namespace, digits_md("health", model=bad_model, optimization=AS_IS,
                                               monitoring={"goldenProbe": {"enabled": False}, "maxErrorRatio": 0.1}))
    wait_phase(custom_api, namespace, "health", "Ready", timeout=300)
    endpoint = pod_endpoints(core_api, namespace, "health")
    wait_for(lambda: prometheus.query(f'up{{namespace="{namespace}"}}'), timeout=60, message="Triton scraped")
    with Load(endpoint, seconds=120, scale=50.0, pause=0.05, model="health"):
        md = wait_phase(custom_api, namespace, "health", "Degraded", timeout=100)
    degraded = condition(md, "Degraded")
    assert degraded["status"] == "True" and degraded["reason"] == "ErrorRatioHigh", degraded
    assert md["status"]["health"]["healthy"] is False and md["status"]["health"]["errorRatio"] > 0.1
    # Good requests only: once the window no longer holds errors, healthy again.
    with Load(endpoint, seconds=180, pause=0.05, model="health") as good:
        md = wait_phase(custom_api, namespace, "health", "Ready", timeout=150)
    assert good.failed == 0
    assert condition(md, "Degraded")["status"] == "False"
    assert md["status"]["health"]["reason"] in ("WithinObjectives", "NoTraffic")


def test_golden_probe_catches_a_model_whose_answers_changed(
    models: Path, start_operator: Any, cluster: Any, namespace: str, custom_api: Any, core_api: Any,
) -> None:
    start_operator()
    create_md(custom_api, namespace, digits_md("golden", model=ONNX_MODEL, optimization=AS_IS,
                                               monitoring={"goldenProbe": {"enabled": True, "intervalSeconds": 5, "samples": 32}}))
    wait_phase(custom_api, namespace, "golden", "Ready", timeout=300)
    md = wait_for(lambda: (m := get_md(custom_api, namespace, "golden")).get("status", {}).get("quality", {}).get("passed") is True and m,
                  timeout=180, interval=1, message="a passing golden probe")
    assert condition(md, "QualityDegraded")["status"] == "False" and md["status"]["quality"]["agreement"] >= 0.99

    # Someone (or a bad disk) changes the model under the running server; the container restarts
    # and loads it. The artifact store still holds the right one: only the live answers drifted.
    (pod,) = ready_triton_pods(core_api, namespace, "golden")
    repo = Path(cluster.state_dir) / "runner" / f"{namespace}_{pod.metadata.name}_{pod.metadata.uid[:8]}" / "volumes" / "models"
    (served,) = list(repo.rglob("*.onnx"))
    drifted_copy(served)
    container = next(c for c in pod.status.container_statuses if c.name == "triton")
    os.kill(int(container.container_id.split("://", 1)[1]), signal.SIGKILL)

    def restarted() -> bool:
        live = core_api.read_namespaced_pod(pod.metadata.name, namespace)
        return live.status.container_statuses[0].restart_count >= 1 and bool(ready_triton_pods(core_api, namespace, "golden"))

    wait_for(restarted, timeout=120, interval=1, message="Triton restarted and Ready")

    md = wait_for(lambda: condition(m := get_md(custom_api, namespace, "golden"), "QualityDegraded").get("status") == "True" and m,
                  timeout=180, interval=1, message="QualityDegraded=True")
    assert condition(md, "QualityDegraded")["reason"] == "GoldenSetDrift"
    assert md["status"]["quality"]["passed"] is False and md["status"]["quality"]["agreement"] < 0.9
    wait_for(lambda: events(core_api, namespace, "golden", "GoldenSetDrift"), timeout=30, message="the GoldenSetDrift Event")


def test_oscillating_load_does_not_make_replicas_flap(
    models: Path, start_operator: Any, namespace: str, custom_api: Any, core_api: Any, prometheus: Any,
) -> None:
    start_operator()
    autoscaling = {
        "minReplicas": 1, "maxReplicas": 2, "metrics": [{"type": "inferenceRate", "target": 5}], "pollSeconds": 2,
        "scaleUp": {"stabilizationSeconds": 0, "periodSeconds": 5},
        "scaleDown": {"stabilizationSeconds": 45, "periodSeconds": 5},
    }
    create_md(custom_api, namespace, digits_md("wave", model=ONNX_MODEL, optimization=AS_IS, autoscaling=autoscaling))
    wait_phase(custom_api, namespace, "wave", "Ready", timeout=300)
    wait_for(lambda: prometheus.query(f'up{{namespace="{namespace}"}}'), timeout=60, message="Triton scraped")

    # Five cycles of 10 s of load and 10 s of silence, against whatever pods are ready.
    started = time.time()
    with Load(lambda: pod_endpoints(core_api, namespace, "wave"), seconds=100, pause=0.01, on_off=(10, 10), model="wave") as load:
        load.thread.join(timeout=160)
    ended = time.time()
    assert load.failed == 0 and load.sent > 100, (load.sent, load.errors)
    md = get_md(custom_api, namespace, "wave")
    during = [h for h in md["status"].get("scaling", {}).get("history", []) if started <= h["unixTime"] <= ended]
    ups = [h for h in during if h["toReplicas"] > h["fromReplicas"]]
    downs = [h for h in during if h["toReplicas"] < h["fromReplicas"]]
    assert len(ups) == 1 and not downs, during
    assert md["spec"]["serving"]["replicas"] == 2

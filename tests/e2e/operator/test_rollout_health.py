"""Health, canary and rollback on the real stack: Triton pods as containers on the real node, the
real Prometheus scraping them, the operator reading both, clients going through the Service.

- a canary whose model returns errors takes its share of the Service's traffic (that is what a
  canary is for: real requests), is rolled back, and afterwards every request succeeds;
- a steady fleet whose error ratio breaks monitoring.maxErrorRatio is Degraded, and recovers;
- the golden-set probe catches a served model whose answers changed;
- an oscillating load makes the fleet scale up once, never flap down and up.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from md_helpers import (
    AS_IS,
    GROUP,
    MODELS_CLAIM,
    ONNX_MODEL,
    PLURAL,
    STORE_CLAIM,
    VERSION,
    Load,
    ServiceTimeline,
    condition,
    create_md,
    digits_md,
    drifted_copy,
    erroring_digits,
    get_md,
    kube_proxy_routes_to,
    make_claim,
    pod_endpoints,
    put_digits,
    ready_triton_pods,
    service_endpoint,
    service_pod_ips,
    wait_phase,
)

from kubetest.wait import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.slow]



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


def test_canary_with_errors_is_rolled_back_and_then_every_request_succeeds(
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

    # Users' requests go to the Service. Their inputs are ones the stable model answers and the
    # new model cannot (its lookup fails above 20), so every failure is a request the canary took.
    timeline = ServiceTimeline(core_api, namespace, "canary-triton", "serving.model-operator.io/deployment=canary")
    with timeline, Load(service_endpoint(core_api, namespace, "canary-triton"), seconds=500, scale=50.0, pause=0.05, model="canary") as load:
        wait_for(lambda: load.sent > 20, timeout=60, message="answers from the stable track")
        assert load.failed == 0, load.errors
        patch_spec(custom_api, namespace, "canary", {"model": {**ONNX_MODEL, "uri": "pvc://models/digits-bad.onnx"}})
        canary_ips = {e.split(":")[0] for e in wait_for(lambda: pod_endpoints(core_api, namespace, "canary", "canary"), timeout=300,
                                                        interval=1, message="the canary pod Ready")}
        wait_for(lambda: all(kube_proxy_routes_to(ip) for ip in canary_ips), timeout=60, interval=0.5,
                 message="kube-proxy's rules sending the Service's connections to the canary pod too")
        md = get_md(custom_api, namespace, "canary")
        assert md["status"]["rollout"]["canary"]["revision"] != stable_revision
        assert condition(md, "RolledBack")["reason"] == "Analysing"
        sent_before = load.sent
        md = wait_for(lambda: condition(m := get_md(custom_api, namespace, "canary"), "RolledBack").get("status") == "True" and m,
                      timeout=300, interval=1, message="RolledBack=True")
        # Both tracks took traffic through the Service while the canary ran.
        assert load.failed > 0 and load.sent > sent_before, (load.sent, load.failed, load.errors[-3:])
        rolled = condition(md, "RolledBack")
        assert rolled["reason"] == "ErrorRatioBreached", rolled
        assert "error ratio" in rolled["message"] and stable_revision in rolled["message"]
        assert md["status"]["rollout"]["stable"]["revision"] == stable_revision
        assert md["status"]["rollout"]["failedRevisions"] and "canary" not in md["status"]["rollout"]
        wait_for(lambda: events(core_api, namespace, "canary", "RolledBack"), timeout=30, message="the RolledBack Event")
        wait_for(lambda: not [d for d in apps_api.list_namespaced_deployment(namespace).items if d.metadata.name.endswith("-canary")],
                 timeout=60, message="the canary Deployment removed")
        stable_ips = {e.split(":")[0] for e in stable}
        wait_for(lambda: service_pod_ips(core_api, namespace, "canary-triton") == stable_ips, timeout=60, interval=0.5,
                 message="the Service's endpoints are the stable pod only")
        # kube-proxy follows the EndpointSlice within a sync (a CI run on a loaded host saw it take
        # longer than the canary pod's 5-s drain: 3 requests refused); from then on nothing fails.
        wait_for(lambda: not any(kube_proxy_routes_to(ip) for ip in canary_ips), timeout=60, interval=0.5,
                 message="kube-proxy's rules without the canary pod")
        mark = load.sent
        wait_for(lambda: load.sent > mark + 20, timeout=60, message="answers after the rollback")
        failed, refused, sent = load.failed, load.refused, load.sent
        wait_for(lambda: load.sent > sent + 100, timeout=120, message="more answers after the rollback")
        # No answer from the canary's model any more. A CI run saw 6 connections to the Service
        # refused here within a moment (cause not found): a connection or two that could not be
        # made is told apart from answers the canary gave, and the timeline in the message shows
        # the endpoints, pods and probe failures around it.
        assert load.failed - load.refused == failed - refused, f"{load.errors[-5:]}\n{timeline}"
        assert load.refused - refused <= 2, f"{load.errors[-5:]}\n{timeline}"
    md = wait_phase(custom_api, namespace, "canary", "Ready", timeout=60)
    assert md["spec"]["model"]["uri"].endswith("digits-bad.onnx")  # the spec is the user's; status says what serves


def test_a_canary_no_request_reached_is_held_then_promoted_once_traffic_comes(
    models: Path, start_operator: Any, namespace: str, custom_api: Any, core_api: Any, prometheus: Any,
) -> None:
    start_operator()
    # The latency check is not what this test is about: dynamic int8 of this small CNN can be
    # slower than its fp32 stable (seen in CI: p99 1.86x, rolled back at the default 1.5x).
    rollout = {"strategy": "canary", "canary": {"weight": 50, "analysisSeconds": 20, "minRequests": 10, "maxLatencyRatio": 100}}
    create_md(custom_api, namespace, digits_md("quiet", model=ONNX_MODEL, optimization=AS_IS, rollout=rollout))
    md = wait_phase(custom_api, namespace, "quiet", "Ready", timeout=300)
    stable_revision = md["status"]["rollout"]["stable"]["revision"]
    wait_for(lambda: prometheus.query(f'up{{namespace="{namespace}"}}'), timeout=60, message="Triton scraped")
    # A new artifact (dynamic int8) as a canary, and no client at all.
    patch_spec(custom_api, namespace, "quiet", {"optimization": {"quantization": {"mode": "dynamic-int8"}}})
    md = wait_for(lambda: condition(m := get_md(custom_api, namespace, "quiet"), "Progressing").get("reason") == "NoCanaryTraffic" and m,
                  timeout=300, interval=1, message="Progressing NoCanaryTraffic after the analysis window")
    assert md["status"]["rollout"]["stable"]["revision"] == stable_revision and "canary" in md["status"]["rollout"]
    assert condition(md, "RolledBack").get("status") != "True"
    wait_for(lambda: events(core_api, namespace, "quiet", "NoCanaryTraffic"), timeout=30, message="the NoCanaryTraffic Event")
    # Traffic through the Service reaches both tracks; with enough canary requests it is promoted.
    with Load(service_endpoint(core_api, namespace, "quiet-triton"), seconds=300, pause=0.05, model="quiet") as load:
        md = wait_for(lambda: (m := get_md(custom_api, namespace, "quiet"))["status"]["rollout"]["stable"]["revision"] != stable_revision
                      and "canary" not in m["status"]["rollout"] and m, timeout=240, interval=1, message="the canary promoted")
    assert load.failed == 0, load.errors[-3:]
    assert condition(md, "RolledBack").get("status") != "True"


def test_error_ratio_above_the_objective_degrades_and_recovers(
    models: Path, start_operator: Any, namespace: str, custom_api: Any, core_api: Any, prometheus: Any,
) -> None:
    start_operator(health_interval_seconds=2)
    bad_model = {**ONNX_MODEL, "uri": "pvc://models/digits-bad.onnx"}
    create_md(custom_api, namespace, digits_md("health", model=bad_model, optimization=AS_IS,
                                               monitoring={"goldenProbe": {"enabled": False}, "maxErrorRatio": 0.1}))
    wait_phase(custom_api, namespace, "health", "Ready", timeout=300)
    endpoint = service_endpoint(core_api, namespace, "health-triton")
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


class JobsCreated:
    """Every Job created in a namespace while the block runs (a watch, so a Job created and
    deleted in between is seen too)."""

    def __init__(self, batch_api: Any, namespace: str) -> None:
        self.batch_api, self.namespace = batch_api, namespace
        self.names: list[str] = []
        self._stop = threading.Event()

    def _run(self) -> None:
        from kubernetes import watch

        while not self._stop.is_set():
            for event in watch.Watch().stream(self.batch_api.list_namespaced_job, self.namespace, timeout_seconds=2):
                if event["type"] == "ADDED" and event["object"].metadata.name not in self.names:
                    self.names.append(event["object"].metadata.name)

    def __enter__(self) -> JobsCreated:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def test_golden_probe_catches_a_model_whose_answers_changed(
    models: Path, start_operator: Any, cluster: Any, namespace: str, custom_api: Any, core_api: Any, batch_api: Any, prometheus: Any,
) -> None:
    """The probe container beside Triton probes the local model every 5 s and exports its verdict;
    the real Prometheus scrapes it and the operator reads it into status.quality with the fleet's
    one quality query. No probe Job, ever."""
    start_operator()
    with JobsCreated(batch_api, namespace) as jobs:
        create_md(custom_api, namespace, digits_md("golden", model=ONNX_MODEL, optimization=AS_IS,
                                                   monitoring={"goldenProbe": {"enabled": True, "intervalSeconds": 5, "samples": 32}}))
        wait_phase(custom_api, namespace, "golden", "Ready", timeout=300)
        md = wait_for(lambda: (m := get_md(custom_api, namespace, "golden")).get("status", {}).get("quality", {}).get("passed") is True and m,
                      timeout=180, interval=1, message="a passing golden probe")
        assert condition(md, "QualityDegraded")["status"] == "False" and md["status"]["quality"]["agreement"] >= 0.99
        revision = md["status"]["rollout"]["stable"]["revision"]
        assert md["status"]["quality"]["revision"] == revision and md["status"]["quality"]["samples"] == 32
        # What the operator read is what the probe container exported, through the real Prometheus.
        (series,) = prometheus.query(f'model_operator_golden_passed{{namespace="{namespace}",modeldeployment="golden"}}')
        assert series["metric"]["revision"] == revision and series["metric"]["track"] == "stable" and series["value"][1] == "1"

        # Someone (or a bad disk) changes the model under the running server; the container restarts
        # and loads it. The artifact store still holds the right one: only the live answers drifted.
        (pod,) = ready_triton_pods(core_api, namespace, "golden")
        repo = cluster.pod_volume_dir(pod.metadata.uid, "models")
        (served,) = list(repo.rglob("*.onnx"))
        drifted_copy(served)
        container = next(c for c in pod.status.container_statuses if c.name == "triton")
        os.kill(cluster.container_pid(container.container_id), signal.SIGKILL)

        def restarted() -> bool:
            live = core_api.read_namespaced_pod(pod.metadata.name, namespace)
            triton = next(c for c in live.status.container_statuses if c.name == "triton")
            return triton.restart_count >= 1 and bool(ready_triton_pods(core_api, namespace, "golden"))

        wait_for(restarted, timeout=120, interval=1, message="Triton restarted and Ready")

        md = wait_for(lambda: condition(m := get_md(custom_api, namespace, "golden"), "QualityDegraded").get("status") == "True" and m,
                      timeout=180, interval=1, message="QualityDegraded=True")
        assert condition(md, "QualityDegraded")["reason"] == "GoldenSetDrift"
        assert md["status"]["quality"]["passed"] is False and md["status"]["quality"]["agreement"] < 0.9
        wait_for(lambda: events(core_api, namespace, "golden", "GoldenSetDrift"), timeout=30, message="the GoldenSetDrift Event")
    assert not [n for n in jobs.names if "probe" in n], jobs.names


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
    with Load(service_endpoint(core_api, namespace, "wave-triton"), seconds=100, pause=0.01, on_off=(10, 10), model="wave") as load:
        load.thread.join(timeout=160)
    ended = time.time()
    assert load.failed == 0 and load.sent > 100, (load.sent, load.errors)
    md = get_md(custom_api, namespace, "wave")
    during = [h for h in md["status"].get("scaling", {}).get("history", []) if started <= h["unixTime"] <= ended]
    ups = [h for h in during if h["toReplicas"] > h["fromReplicas"]]
    downs = [h for h in during if h["toReplicas"] < h["fromReplicas"]]
    assert len(ups) == 1 and not downs, during
    assert md["spec"]["serving"]["replicas"] == 2

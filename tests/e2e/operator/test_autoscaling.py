"""The built-in autoscaler against real Triton pods, a real Prometheus scraping them, and the
real control plane: load arrives -> the operator scales up -> new pods Ready -> load stops ->
after the stabilization window it scales down. And: Prometheus unreachable -> replicas held."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from md_helpers import (
    MODELS_CLAIM,
    STORE_CLAIM,
    Load,
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
from model_operator.api.types import ScalingMetricType
from model_operator.scaling import promql
from model_operator.scaling.prometheus import AsyncPrometheus, Prometheus

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

AUTOSCALING = {
    "minReplicas": 1,
    "maxReplicas": 3,
    "metrics": [{"type": "inferenceRate", "target": 5}],
    "tolerance": 0.1,
    "pollSeconds": 2,
    "scaleUp": {"stabilizationSeconds": 0, "periodSeconds": 5},
    "scaleDown": {"stabilizationSeconds": 20, "periodSeconds": 5},
}


@pytest.fixture
def digits_ready(start_operator: Any, namespace: str, core_api: Any, custom_api: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    def make(**overrides: Any) -> dict[str, Any]:
        models = make_claim(core_api, namespace, MODELS_CLAIM)
        make_claim(core_api, namespace, STORE_CLAIM)
        put_digits(models, tmp_path_factory.getbasetemp())
        start_operator(**overrides)
        create_md(custom_api, namespace, digits_md("digits", optimization={"quantization": {"mode": "none"}}, autoscaling=AUTOSCALING))
        return wait_phase(custom_api, namespace, "digits", "Ready", timeout=300)

    return make


def test_scales_up_under_load_and_back_down(digits_ready: Any, namespace: str, core_api: Any, custom_api: Any, prometheus: Any) -> None:
    digits_ready()
    assert ready_triton_pods(core_api, namespace, "digits")
    # Prometheus must see the pod before load means anything.
    wait_for(lambda: prometheus.query(f'up{{namespace="{namespace}"}}'), timeout=60, message="Triton scraped")

    with Load(service_endpoint(core_api, namespace, "digits-triton"), seconds=240) as load:
        # The scaler writes spec.serving.replicas, then its decision into status (two requests):
        # wait for both.
        md = wait_for(
            lambda: (m := get_md(custom_api, namespace, "digits"))["spec"]["serving"]["replicas"] > 1
            and ((m.get("status") or {}).get("scaling") or {}).get("history") and m,
            timeout=120, interval=1, message="a scale-up decision",
        )
        scaling = md["status"]["scaling"]
        assert scaling["history"][-1]["fromReplicas"] == 1 and scaling["history"][-1]["toReplicas"] > 1
        assert "inferenceRate" in scaling["history"][-1]["reason"]
        assert condition(md, "MetricsAvailable")["status"] == "True"
        # The scaler's one query for the whole fleet gives this MD what its own query gives.
        fleet = asyncio.run(AsyncPrometheus(prometheus.url).query_by(
            promql.fleet_scaling_query(ScalingMetricType.inference_rate, "20s"), ("namespace", "md")))
        alone = Prometheus(prometheus.url).query(promql.scaling_query(
            ScalingMetricType.inference_rate, promql.pod_matcher("digits", namespace, track=None), "20s"))
        assert alone and fleet.get((namespace, "digits")) == pytest.approx(alone, rel=0.25), (fleet, alone)
        wait_for(lambda: [e for e in core_api.list_namespaced_event(namespace).items
                          if e.involved_object.name == "digits" and e.reason == "Scaled" and e.type == "Normal"],
                 timeout=30, message="a Scaled Event")
        wait_for(
            lambda: len(ready_triton_pods(core_api, namespace, "digits")) >= 2,
            timeout=180, interval=1, message="new Triton replicas Ready",
        )
        # The pods a per-replica value was taken over, as the scaler counts them: both, once scraped.
        wait_for(lambda: (asyncio.run(AsyncPrometheus(prometheus.url).query_by(promql.fleet_reporting_pods(), ("namespace", "md")))
                          .get((namespace, "digits")) or 0) >= 2, timeout=60, interval=1, message="both replicas scraped")
    assert load.sent > 50 and load.failed == 0, (load.sent, load.failed)

    # No load: after the 20 s stabilization window, back to the minimum.
    md = wait_for(
        lambda: (m := get_md(custom_api, namespace, "digits"))["spec"]["serving"]["replicas"] == 1
        and m["status"]["scaling"]["history"][-1]["toReplicas"] == 1 and m,
        timeout=180, interval=1, message="scale-down after the stabilization window, recorded in status",
    )
    down = md["status"]["scaling"]["history"][-1]
    assert down["toReplicas"] < down["fromReplicas"]
    up = next(h for h in md["status"]["scaling"]["history"] if h["toReplicas"] > h["fromReplicas"])
    assert down["unixTime"] - up["unixTime"] >= 20


def test_prometheus_unreachable_holds_replicas(digits_ready: Any, namespace: str, custom_api: Any) -> None:
    digits_ready(prometheus_url="http://127.0.0.1:9", prometheus_timeout_seconds=1.0)
    md = wait_for(
        lambda: condition(m := get_md(custom_api, namespace, "digits"), "MetricsAvailable").get("status") == "False" and m,
        timeout=60, interval=1, message="MetricsAvailable False",
    )
    assert condition(md, "MetricsAvailable")["reason"] == "PrometheusUnreachable"
    assert "holding 1 replicas" in md["status"]["scaling"]["reason"]
    # Several polls later nothing moved.
    first = md["status"]["scaling"]
    wait_for(lambda: float(get_md(custom_api, namespace, "digits")["status"]["scaling"]["lastPoll"]) > float(first["lastPoll"]) + 6,
             timeout=60, interval=1, message="more polls")
    md = get_md(custom_api, namespace, "digits")
    assert md["spec"]["serving"]["replicas"] == 1 and not md["status"]["scaling"].get("history")

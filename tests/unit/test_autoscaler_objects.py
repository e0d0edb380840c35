"""The engine objects (KEDA ScaledObject, HPA) and which one a spec wants; the health verdict."""

from __future__ import annotations

from typing import Any

import pytest

from model_operator.api.validation import load_spec
from model_operator.resources import autoscaling as a
from model_operator.scaling import health, promql

BASE: dict[str, Any] = {
    "model": {"uri": "pvc://models/digits.onnx", "format": "onnx"},
    "serving": {"replicas": 1},
}


def spec(**autoscaling: Any) -> Any:
    return load_spec({**BASE, "autoscaling": {"minReplicas": 2, "maxReplicas": 6, **autoscaling}})


def test_keda_scaled_object_uses_the_scalers_queries_and_targets_the_scale_subresource() -> None:
    s = spec(engine="keda", metrics=[{"type": "queueTime", "target": 5}, {"type": "inferenceRate", "target": 40}], pollSeconds=7)
    obj = a.build_keda_scaled_object("digits", "ml", s.autoscaling, "http://prom:9090", "30s")
    assert obj["kind"] == "ScaledObject" and obj["metadata"]["name"] == "digits-triton"
    assert obj["spec"]["scaleTargetRef"] == {"apiVersion": "serving.model-operator.io/v1alpha1", "kind": "ModelDeployment", "name": "digits"}
    assert (obj["spec"]["minReplicaCount"], obj["spec"]["maxReplicaCount"], obj["spec"]["pollingInterval"]) == (2, 6, 7)
    queue, rate = obj["spec"]["triggers"]
    sel = promql.pod_matcher("digits", "ml", track=None)
    assert queue["metadata"]["query"] == promql.queue_time_ms(sel, "30s") and queue["metricType"] == "Value"
    assert rate["metadata"]["query"] == promql.inference_rate_per_replica(sel, "30s") and rate["metricType"] == "AverageValue"
    assert rate["metadata"]["threshold"] == "40" and queue["metadata"]["serverAddress"] == "http://prom:9090"
    behavior = obj["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    assert behavior["scaleDown"]["stabilizationWindowSeconds"] == s.autoscaling.scale_down.stabilization_seconds


def test_hpa_maps_cpu_to_a_resource_metric_and_triton_metrics_to_pod_metrics() -> None:
    s = spec(engine="hpa", metrics=[{"type": "cpuUtilization", "target": 70}, {"type": "pendingRequests", "target": 3}])
    obj = a.build_hpa("digits", "ml", s.autoscaling)
    assert obj["apiVersion"] == "autoscaling/v2" and obj["spec"]["scaleTargetRef"]["kind"] == "ModelDeployment"
    cpu, pending = obj["spec"]["metrics"]
    assert cpu["resource"] == {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}}
    assert pending["pods"]["metric"]["name"] == "triton_pendingRequests" and pending["pods"]["target"]["averageValue"] == "3"
    assert obj["spec"]["minReplicas"] == 2 and obj["spec"]["maxReplicas"] == 6


def test_hpa_min_replicas_is_at_least_one() -> None:
    assert a.build_hpa("d", "ml", spec(engine="hpa", minReplicas=0).autoscaling)["spec"]["minReplicas"] == 1


@pytest.mark.parametrize(("engine", "keda", "kind", "status", "reason"), [
    ("operator", True, None, "True", "OperatorScaler"),
    ("hpa", False, "HorizontalPodAutoscaler", "True", "HorizontalPodAutoscaler"),
    ("keda", True, "ScaledObject", "True", "KEDA"),
    ("keda", False, None, "False", "KEDANotInstalled"),
])
def test_desired_autoscaler_per_engine(engine: str, keda: bool, kind: str | None, status: str, reason: str) -> None:
    obj, (value, why, message) = a.desired_autoscaler("digits", "ml", spec(engine=engine), "http://p", "1m", keda)
    assert (obj or {}).get("kind") == kind and (value, why) == (status, reason)
    if reason == "KEDANotInstalled":
        assert "autoscaling.engine" in message and "keda.sh/v1alpha1" in message


def test_no_autoscaler_when_disabled() -> None:
    off = load_spec({**BASE, "autoscaling": {"enabled": False, "engine": "hpa"}})
    obj, (value, reason, _) = a.desired_autoscaler("d", "ml", off, "http://p", "1m", True)
    assert obj is None and (value, reason) == ("False", "Disabled")


@pytest.mark.parametrize(("rate", "errors", "p99", "slo", "healthy", "reason"), [
    (None, None, None, None, None, "NoTraffic"),
    (0.0, 0.5, None, None, None, "NoTraffic"),
    (10.0, 0.2, None, None, False, "ErrorRatioHigh"),
    (10.0, 0.01, None, None, True, "WithinObjectives"),
    (10.0, 0.0, 900.0, 500.0, False, "LatencyAboveObjective"),
    (10.0, 0.0, 100.0, 500.0, True, "WithinObjectives"),
    (10.0, 0.0, float("nan"), 500.0, True, "WithinObjectives"),  # an empty histogram is no evidence
    (10.0, 0.0, 900.0, None, True, "WithinObjectives"),  # no objective set
])
def test_health_verdict(rate: float | None, errors: float | None, p99: float | None, slo: float | None, healthy: bool | None, reason: str) -> None:
    h = health.judge(request_rate=rate, error_ratio=errors, p99_ms=p99, max_error_ratio=0.05, p99_objective_ms=slo)
    assert (h.healthy, h.reason) == (healthy, reason)
    if healthy is False:
        assert "monitoring." in h.message


def test_token_metrics_query_what_the_generation_model_exports() -> None:
    """timeToFirstToken and interTokenLatency are means compared as they are (Value); tokensPerSecond
    and requestsInFlight per replica (AverageValue); each reads the metric triton/generation_model.py exports."""
    from model_operator.api.types import Autoscaling
    from model_operator.triton import generation_model as g

    auto = Autoscaling.model_validate({"engine": "keda", "metrics": [
        {"type": "timeToFirstToken", "target": 250}, {"type": "interTokenLatency", "target": 40},
        {"type": "tokensPerSecond", "target": 300}, {"type": "requestsInFlight", "target": 4}]})
    ttft, itl, tps, flight = a.build_keda_scaled_object("llm", "ml", auto, "http://prom:9090", "30s")["spec"]["triggers"]
    assert [t["metricType"] for t in (ttft, itl, tps, flight)] == ["Value", "Value", "AverageValue", "AverageValue"]
    assert g.TTFT_SUM_METRIC in ttft["metadata"]["query"] and g.TTFT_COUNT_METRIC in ttft["metadata"]["query"]
    assert ttft["metadata"]["query"].startswith("1000 * ") and ttft["metadata"]["threshold"] == "250"
    assert g.ITL_SUM_METRIC in itl["metadata"]["query"] and g.ITL_COUNT_METRIC in itl["metadata"]["query"]
    assert f"rate({g.TOKENS_METRIC}{{" in tps["metadata"]["query"] and "count by (pod)" in tps["metadata"]["query"]
    assert flight["metadata"]["query"] == f'avg(sum by (pod) ({g.IN_FLIGHT_METRIC}{{{promql.pod_matcher("llm", "ml", track=None)}}}))'
    hpa = a.build_hpa("llm", "ml", auto)
    assert [m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"]] == [
        "triton_timeToFirstToken", "triton_interTokenLatency", "triton_tokensPerSecond", "triton_requestsInFlight"]

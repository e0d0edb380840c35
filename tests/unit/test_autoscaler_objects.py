"""The engine objects (KEDA ScaledObject, HPA) and which one a spec wants; the health verdict."""

from __future__ import annotations

import math
import re
from typing import Any

import pytest

from model_operator.api.types import ScalingMetricType
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
    assert rate["metadata"]["query"] == promql.inference_rate_per_replica(sel, "30s")
    assert rate["metadata"]["threshold"] == "40" and queue["metadata"]["serverAddress"] == "http://prom:9090"
    behavior = obj["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    assert behavior["scaleDown"]["stabilizationWindowSeconds"] == s.autoscaling.scale_down.stabilization_seconds


def _hpa_external_desired(current: int, trigger: dict[str, Any], value: float, tolerance: float = 0.1) -> int:
    """What the HPA controller does with one external metric (Kubernetes docs, "Algorithm details"):
    a `Value` target compares the metric itself, ratio = value / target, desired = ceil(current * ratio);
    an `AverageValue` target first divides the metric by the replica count, which gives
    desired = ceil(value / target). Inside the tolerance nothing changes."""
    target = float(trigger["metadata"]["threshold"])
    if trigger["metricType"] == "Value":
        ratio = value / target
    elif trigger["metricType"] == "AverageValue":
        ratio = (value / current) / target
    else:
        raise AssertionError(f"unknown metricType {trigger['metricType']!r}")
    return current if abs(ratio - 1.0) <= tolerance else math.ceil(current * ratio)


def _per_replica(query: str) -> bool:
    """The query's answer is already an average over the pods: divided by the number of pods, or
    an avg() over per-pod sums."""
    return bool(re.search(r"/ clamp_min\(count\(count by \(pod\)", query) or re.match(r"(100 \* )?avg\(", query))


@pytest.mark.parametrize(("metric", "per_pod", "target", "want"), [
    # 3 replicas at 10 req/s each, target 5 req/s per replica: 6 replicas.
    ("inferenceRate", 10.0, 5, 6),
    # 3 replicas with 4 pending requests each, target 2: 6 replicas.
    ("pendingRequests", 4.0, 2, 6),
    # 3 replicas at 90 % GPU, target 45 %: 6 replicas.
    ("gpuUtilization", 90.0, 45, 6),
    # 3 replicas at 1 req/s each, target 3: 1 replica.
    ("inferenceRate", 1.0, 3, 1),
])
def test_keda_triggers_make_the_hpa_want_what_the_load_needs(metric: str, per_pod: float, target: float, want: int) -> None:
    """The HPA's arithmetic on the rendered trigger, for 3 replicas each at `per_pod`: the query answers
    per replica (checked on its text), so it returns `per_pod` whatever the replica count."""
    s = spec(engine="keda", metrics=[{"type": metric, "target": target}], maxReplicas=10)
    (trigger,) = a.build_keda_scaled_object("digits", "ml", s.autoscaling, "http://p", "30s")["spec"]["triggers"]
    assert _per_replica(trigger["metadata"]["query"]), trigger["metadata"]["query"]
    assert _hpa_external_desired(3, trigger, per_pod) == want


def test_keda_queue_time_trigger_scales_with_the_wait_per_request() -> None:
    """Queue time is per request (queue microseconds / requests), not a sum over pods: 3 replicas where
    requests wait 20 ms against a 5 ms target want 12 replicas, the built-in scaler's ceil(3 * 20 / 5)."""
    s = spec(engine="keda", metrics=[{"type": "queueTime", "target": 5}], maxReplicas=20)
    (trigger,) = a.build_keda_scaled_object("digits", "ml", s.autoscaling, "http://p", "30s")["spec"]["triggers"]
    query = trigger["metadata"]["query"]
    assert "nv_inference_queue_duration_us" in query and "/ clamp_min(sum(rate(nv_inference_request_success" in query
    assert _hpa_external_desired(3, trigger, 20.0) == 12


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


@pytest.mark.parametrize(("pod", "md"), [
    ("digits-triton-7d9f8b6c4-x2x9z", "digits"),
    ("digits-triton-canary-7d9f8b6c4-x2x9z", "digits"),
    ("a.b-c-triton-5f7c9-abcde", "a.b-c"),
    # MD names that themselves end like the operator's suffixes
    ("x-triton-canary-triton-5f7c9-abcde", "x-triton-canary"),
    ("x-triton-triton-canary-5f7c9-abcde", "x-triton"),
    ("my-triton-5f7c9-abcde", "my"),
])
def test_the_fleet_queries_take_the_md_from_the_pod_name(pod: str, md: str) -> None:
    """The regex label_replace uses (PromQL anchors it at both ends, as fullmatch does)."""
    match = re.fullmatch(promql.FLEET_MD, pod)
    assert match is not None and match.group(1) == md
    assert re.fullmatch(promql.FLEET_POD, pod)


@pytest.mark.parametrize("pod", ["digits-7d9f8b6c4-x2x9z", "digits-triton-x2x9z", "other-server-5f7c9-abcde"])
def test_pods_not_the_operators_get_no_md(pod: str) -> None:
    assert re.fullmatch(promql.FLEET_POD, pod) is None and re.fullmatch(promql.FLEET_MD, pod) is None


def test_token_metrics_query_what_the_generation_model_exports() -> None:
    """Every token query answers per replica (or per token), so each is a Value metric the HPA
    multiplies by the replica count; each reads the metric triton/generation_model.py exports."""
    from model_operator.api.types import Autoscaling
    from model_operator.triton import generation_model as g

    auto = Autoscaling.model_validate({"engine": "keda", "metrics": [
        {"type": "timeToFirstToken", "target": 250}, {"type": "interTokenLatency", "target": 40},
        {"type": "tokensPerSecond", "target": 300}, {"type": "requestsInFlight", "target": 4}]})
    ttft, itl, tps, flight = a.build_keda_scaled_object("llm", "ml", auto, "http://prom:9090", "30s")["spec"]["triggers"]
    assert [t["metricType"] for t in (ttft, itl, tps, flight)] == ["Value"] * 4
    assert g.TTFT_SUM_METRIC in ttft["metadata"]["query"] and g.TTFT_COUNT_METRIC in ttft["metadata"]["query"]
    assert ttft["metadata"]["query"].startswith("1000 * ") and ttft["metadata"]["threshold"] == "250"
    assert g.ITL_SUM_METRIC in itl["metadata"]["query"] and g.ITL_COUNT_METRIC in itl["metadata"]["query"]
    assert f"rate({g.TOKENS_METRIC}{{" in tps["metadata"]["query"] and "count by (pod)" in tps["metadata"]["query"]
    assert flight["metadata"]["query"] == f'avg(sum by (pod) ({g.IN_FLIGHT_METRIC}{{{promql.pod_matcher("llm", "ml", track=None)}}}))'
    hpa = a.build_hpa("llm", "ml", auto)
    assert [m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"]] == [
        "triton_timeToFirstToken", "triton_interTokenLatency", "triton_tokensPerSecond", "triton_requestsInFlight"]


@pytest.mark.parametrize("metric", list(ScalingMetricType))
def test_the_fleet_query_reads_the_metrics_the_single_md_query_reads(metric: ScalingMetricType) -> None:
    """A metric kind the fleet query forgot would fall through to another kind's series."""
    def names(query: str) -> set[str]:
        return set(re.findall(r"\b((?:nv|model_operator)_[a-z_]+)\{", query))

    single = promql.scaling_query(metric, 'namespace="ml",pod=~"x-triton-.*"', "30s")
    assert names(single) and names(promql.fleet_scaling_query(metric, "30s")) == names(single)

"""PromQL for Triton's `nv_inference_*` metrics, scoped to one ModelDeployment's pods.

Pods are matched by namespace and by the name pattern the Deployment controller gives them
(`<deployment>-<replicaset hash>-<suffix>`), which works whether Prometheus found them through
pod discovery or a ServiceMonitor. The stable and canary tracks have distinct patterns.
"""

from __future__ import annotations

from ..api.types import ScalingMetricType
from ..resources.common import deployment_name

POD_SUFFIX = "-[a-z0-9]+-[a-z0-9]+"


def _regex_literal(name: str) -> str:
    """A Kubernetes name as a literal inside a PromQL regex string. Names hold only [a-z0-9.-];
    the dot is the one regex metacharacter, and PromQL strings need its backslash doubled."""
    return name.replace(".", "\\\\.")


def pod_matcher(md_name: str, namespace: str, track: str | None = "stable", model: str | None = None) -> str:
    """Label matchers for one track's pods (or both tracks when track is None)."""
    if track is None:
        names = f"({_regex_literal(deployment_name(md_name, 'stable'))}|{_regex_literal(deployment_name(md_name, 'canary'))})"
    else:
        names = _regex_literal(deployment_name(md_name, track))
    parts = [f'namespace="{namespace}"', f'pod=~"{names}{POD_SUFFIX}"']
    if model:
        parts.append(f'model="{model}"')
    return ",".join(parts)


def _rate(metric: str, sel: str, window: str) -> str:
    return f"sum(rate({metric}{{{sel}}}[{window}]))"


def queue_time_ms(sel: str, window: str) -> str:
    """Average time a request waited in Triton's queue over the window, in milliseconds."""
    return (
        f"({_rate('nv_inference_queue_duration_us', sel, window)} / 1000)"
        f" / clamp_min({_rate('nv_inference_request_success', sel, window)}, 1e-9)"
    )


def inference_rate_per_replica(sel: str, window: str) -> str:
    return f"{_rate('nv_inference_count', sel, window)} / clamp_min(count(count by (pod) (nv_inference_count{{{sel}}})), 1)"


def pending_per_replica(sel: str) -> str:
    return f"avg(sum by (pod) (nv_inference_pending_request_count{{{sel}}}))"


def gpu_utilization_percent(sel: str) -> str:
    return f"100 * avg(nv_gpu_utilization{{{sel}}})"


def cpu_utilization_percent(sel: str) -> str:
    return f"100 * avg(nv_cpu_utilization{{{sel}}})"


# Errors the project's Python-backend model counts itself (triton/python_model.py): Triton
# counts such responses as successes. Absent on other backends, hence `or vector(0)`.
BACKEND_FAILURE = "model_operator_backend_request_failure"


def failures_rate(sel: str, window: str) -> str:
    return f"({_rate('nv_inference_request_failure', sel, window)} + ({_rate(BACKEND_FAILURE, sel, window)} or vector(0)))"


def error_ratio(sel: str, window: str) -> str:
    """Failed / all requests. A Python-backend error is in both the success count and the
    backend's own failure count, so the total is success + Triton's failures."""
    triton_failures = _rate("nv_inference_request_failure", sel, window)
    successes = _rate("nv_inference_request_success", sel, window)
    return f"{failures_rate(sel, window)} / clamp_min({triton_failures} + {successes}, 1e-9)"


def request_rate(sel: str, window: str) -> str:
    return f"{_rate('nv_inference_request_success', sel, window)} + {_rate('nv_inference_request_failure', sel, window)}"


# Triton's request-latency summary: the operator starts Triton with
# --metrics-config=summary_latencies=true (resources/serving.triton_args), which exports
# quantiles 0.5, 0.9, 0.95, 0.99 and 0.999 over a sliding window, per pod.
LATENCY_SUMMARY = "nv_inference_request_summary_us"


def latency_quantile_ms(q: float, sel: str) -> str:
    """A request-latency quantile from Triton's summaries: the slowest pod's, since quantiles of
    separate pods cannot be merged (a pod with no requests in the window reports NaN, ignored)."""
    return f'max({LATENCY_SUMMARY}{{{sel},quantile="{q:g}"}}) / 1000'


def p99_latency_ms(sel: str, window: str) -> str:
    """p99 request latency (`window` is unused: Triton's summary window is its own)."""
    return latency_quantile_ms(0.99, sel)


def request_count(sel: str, seconds: float) -> str:
    """Requests answered (successes and failures) over the last `seconds`."""
    window = f"{max(int(seconds), 1)}s"
    return (f"sum(increase(nv_inference_request_success{{{sel}}}[{window}]))"
            f" + sum(increase(nv_inference_request_failure{{{sel}}}[{window}]))")


def avg_latency_ms(sel: str, window: str) -> str:
    """Mean request latency: the fallback where no histogram is exported (Triton's default)."""
    return (
        f"({_rate('nv_inference_request_duration_us', sel, window)} / 1000)"
        f" / clamp_min({_rate('nv_inference_request_success', sel, window)}, 1e-9)"
    )


# Generation models (triton/generation_model.py): counters of sums and counts, a gauge of requests in flight.
def _mean_ms(metric: str, sel: str, window: str) -> str:
    return f"1000 * {_rate(metric + '_sum', sel, window)} / clamp_min({_rate(metric + '_count', sel, window)}, 1e-9)"


def time_to_first_token_ms(sel: str, window: str) -> str:
    """Mean time from a model instance taking a request to its first token (Triton's queue wait not included) over the window, in milliseconds."""
    return _mean_ms("model_operator_time_to_first_token_seconds", sel, window)


def inter_token_latency_ms(sel: str, window: str) -> str:
    """Mean time between consecutive tokens of a request over the window, in milliseconds."""
    return _mean_ms("model_operator_inter_token_latency_seconds", sel, window)


def tokens_per_second_per_replica(sel: str, window: str) -> str:
    metric = "model_operator_generated_tokens"
    return f"{_rate(metric, sel, window)} / clamp_min(count(count by (pod) ({metric}{{{sel}}})), 1)"


def in_flight_per_replica(sel: str) -> str:
    return f"avg(sum by (pod) (model_operator_generation_requests_in_flight{{{sel}}}))"


# Means over all requests (not per replica): the built-in scaler and KEDA compare them with the target as they are.
LATENCY_TYPES = (ScalingMetricType.queue_time, ScalingMetricType.time_to_first_token, ScalingMetricType.inter_token_latency)


def scaling_query(metric: ScalingMetricType, sel: str, window: str) -> str:
    if metric == ScalingMetricType.queue_time:
        return queue_time_ms(sel, window)
    if metric == ScalingMetricType.inference_rate:
        return inference_rate_per_replica(sel, window)
    if metric == ScalingMetricType.pending_requests:
        return pending_per_replica(sel)
    if metric == ScalingMetricType.gpu_utilization:
        return gpu_utilization_percent(sel)
    if metric == ScalingMetricType.time_to_first_token:
        return time_to_first_token_ms(sel, window)
    if metric == ScalingMetricType.inter_token_latency:
        return inter_token_latency_ms(sel, window)
    if metric == ScalingMetricType.tokens_per_second:
        return tokens_per_second_per_replica(sel, window)
    if metric == ScalingMetricType.requests_in_flight:
        return in_flight_per_replica(sel)
    return cpu_utilization_percent(sel)


# --- per pod, for a metrics adapter serving the `hpa` engine's Pods metrics ------------------
# The HPA asks for one value per pod and averages them (a Pods metric with an AverageValue
# target), then wants ceil(replicas * average / target): the built-in scaler's rule. So each
# query answers, per pod, what scaling_query answers for the whole ModelDeployment: a per-replica
# value (rate, pending requests) is the pod's own; a per-request mean (queue time, token
# latencies) is the pod's own mean, which equals the ModelDeployment's when the Service spreads
# the requests evenly. `by` names the grouping labels (the adapter's template puts its own).
# The metric whose presence shows that a pod exports the series a query reads.
SOURCE_SERIES = {
    ScalingMetricType.queue_time: "nv_inference_queue_duration_us",
    ScalingMetricType.inference_rate: "nv_inference_count",
    ScalingMetricType.pending_requests: "nv_inference_pending_request_count",
    ScalingMetricType.gpu_utilization: "nv_gpu_utilization",
    ScalingMetricType.cpu_utilization: "nv_cpu_utilization",
    ScalingMetricType.time_to_first_token: "model_operator_time_to_first_token_seconds_count",
    ScalingMetricType.inter_token_latency: "model_operator_inter_token_latency_seconds_count",
    ScalingMetricType.tokens_per_second: "model_operator_generated_tokens",
    ScalingMetricType.requests_in_flight: "model_operator_generation_requests_in_flight",
}


def _rate_by(metric: str, sel: str, window: str, by: str) -> str:
    return f"sum by ({by}) (rate({metric}{{{sel}}}[{window}]))"


def _mean_ms_by(metric: str, sel: str, window: str, by: str) -> str:
    return f"1000 * {_rate_by(metric + '_sum', sel, window, by)} / clamp_min({_rate_by(metric + '_count', sel, window, by)}, 1e-9)"


def pod_scaling_query(metric: ScalingMetricType, sel: str, window: str, by: str = "namespace, pod") -> str:
    """scaling_query per pod: one sample per `by` group (a pod), for the HPA to average."""
    if metric == ScalingMetricType.queue_time:
        return (f"({_rate_by('nv_inference_queue_duration_us', sel, window, by)} / 1000)"
                f" / clamp_min({_rate_by('nv_inference_request_success', sel, window, by)}, 1e-9)")
    if metric in (ScalingMetricType.inference_rate, ScalingMetricType.tokens_per_second):
        return _rate_by(SOURCE_SERIES[metric], sel, window, by)
    if metric in (ScalingMetricType.pending_requests, ScalingMetricType.requests_in_flight):
        return f"sum by ({by}) ({SOURCE_SERIES[metric]}{{{sel}}})"
    if metric == ScalingMetricType.time_to_first_token:
        return _mean_ms_by("model_operator_time_to_first_token_seconds", sel, window, by)
    if metric == ScalingMetricType.inter_token_latency:
        return _mean_ms_by("model_operator_inter_token_latency_seconds", sel, window, by)
    return f"100 * avg by ({by}) ({SOURCE_SERIES[metric]}{{{sel}}})"


# --- the whole fleet in one query per metric kind ---------------------------------------------
# Every Triton pod the operator runs is named <md>-triton-<rs hash>-<suffix> (stable) or
# <md>-triton-canary-<rs hash>-<suffix>; the ReplicaSet hash and suffix hold no '-', so the
# regex (anchored by PromQL) takes the MD's name unambiguously. label_replace copies it into an
# `md` label, and each query aggregates `by (namespace, md)`: one answer row per ModelDeployment,
# stable and canary tracks together, as pod_matcher(track=None) does for a single one.
# (MD names longer than 49 characters are truncated in their canary Deployment's name, so their
# canary pods form a separate row the scaler does not find; the stable track still counts.)
FLEET_POD = f".+-triton(-canary)?{POD_SUFFIX}"
FLEET_MD = f"(.+)-triton(?:-canary)?{POD_SUFFIX}"
FLEET_BY = "namespace, md"


def _with_md(expr: str) -> str:
    return f'label_replace({expr}, "md", "$1", "pod", "{FLEET_MD}")'


def _fleet_sel(metric: str) -> str:
    return f'{metric}{{pod=~"{FLEET_POD}"}}'


def _fleet_rate(metric: str, window: str) -> str:
    return f"sum by ({FLEET_BY}) ({_with_md(f'rate({_fleet_sel(metric)}[{window}])')})"


def fleet_scaling_query(metric: ScalingMetricType, window: str) -> str:
    """scaling_query for every ModelDeployment at once: a vector with one sample per
    (namespace, md), each the value scaling_query gives for that MD alone."""
    if metric == ScalingMetricType.queue_time:
        return (f"({_fleet_rate('nv_inference_queue_duration_us', window)} / 1000)"
                f" / clamp_min({_fleet_rate('nv_inference_request_success', window)}, 1e-9)")
    if metric == ScalingMetricType.inference_rate:
        return f"{_fleet_rate('nv_inference_count', window)} / clamp_min({_fleet_pods('nv_inference_count')}, 1)"
    if metric == ScalingMetricType.pending_requests:
        return f"avg by ({FLEET_BY}) (sum by ({FLEET_BY}, pod) ({_with_md(_fleet_sel('nv_inference_pending_request_count'))}))"
    if metric == ScalingMetricType.gpu_utilization:
        return f"100 * avg by ({FLEET_BY}) ({_with_md(_fleet_sel('nv_gpu_utilization'))})"
    if metric == ScalingMetricType.time_to_first_token:
        return _fleet_mean_ms("model_operator_time_to_first_token_seconds", window)
    if metric == ScalingMetricType.inter_token_latency:
        return _fleet_mean_ms("model_operator_inter_token_latency_seconds", window)
    if metric == ScalingMetricType.tokens_per_second:
        tokens = "model_operator_generated_tokens"
        return f"{_fleet_rate(tokens, window)} / clamp_min({_fleet_pods(tokens)}, 1)"
    if metric == ScalingMetricType.requests_in_flight:
        return f"avg by ({FLEET_BY}) (sum by ({FLEET_BY}, pod) ({_with_md(_fleet_sel('model_operator_generation_requests_in_flight'))}))"
    return f"100 * avg by ({FLEET_BY}) ({_with_md(_fleet_sel('nv_cpu_utilization'))})"


def _fleet_pods(metric: str) -> str:
    """The number of each ModelDeployment's pods that export `metric`."""
    return f"count by ({FLEET_BY}) (count by ({FLEET_BY}, pod) ({_with_md(_fleet_sel(metric))}))"


def fleet_reporting_pods() -> str:
    """How many Triton pods of each ModelDeployment Prometheus has scraped: the replicas a
    per-replica value was taken over. A pod turns Ready before its first scrape, and in that gap
    a per-replica value is one pod's load, which must not be multiplied by the Ready count."""
    return _fleet_pods("nv_inference_count")


def _fleet_mean_ms(metric: str, window: str) -> str:
    return (f"1000 * {_fleet_rate(metric + '_sum', window)}"
            f" / clamp_min({_fleet_rate(metric + '_count', window)}, 1e-9)")


def fleet_request_rate(window: str) -> str:
    """request_rate for every ModelDeployment at once."""
    return f"{_fleet_rate('nv_inference_request_success', window)} + {_fleet_rate('nv_inference_request_failure', window)}"


def fleet_error_ratio(window: str) -> str:
    """error_ratio for every ModelDeployment at once. The backend's own failure counter exists
    only on the project's Python backend: where it is absent, `or` takes 0 times Triton's
    failures (the same labels), as `or vector(0)` does for one MD."""
    triton_failures = _fleet_rate("nv_inference_request_failure", window)
    failures = f"({triton_failures} + ({_fleet_rate(BACKEND_FAILURE, window)} or (0 * {triton_failures})))"
    return f"{failures} / clamp_min({triton_failures} + {_fleet_rate('nv_inference_request_success', window)}, 1e-9)"


def fleet_p99_latency_ms() -> str:
    """p99_latency_ms for every ModelDeployment at once: each one's slowest pod."""
    series = LATENCY_SUMMARY + '{pod=~"' + FLEET_POD + '",quantile="0.99"}'
    return f"max by ({FLEET_BY}) ({_with_md(series)}) / 1000"


# --- golden-set quality, from the probe container beside each Triton (triton/pod_commands.probe_main) ---
# Its series carry modeldeployment, revision and track labels of their own (Prometheus adds namespace
# and pod), so one query, grouped by metric name, answers every ModelDeployment's every revision:
# the worst replica's agreement, cosine and verdict, whether any replica could not compare, and the
# oldest replica's last probe time (a replica whose probe stopped makes the whole answer stale).
GOLDEN_BY = ("__name__", "namespace", "modeldeployment", "revision")
GOLDEN_METRICS = {
    "model_operator_golden_probe_timestamp_seconds": "time",
    "model_operator_golden_probe_ok": "ok",
    "model_operator_golden_passed": "passed",
    "model_operator_golden_agreement": "agreement",
    "model_operator_golden_cosine": "cosine",
    "model_operator_golden_samples": "samples",
}


def fleet_golden_quality() -> str:
    names = "|".join(sorted(GOLDEN_METRICS))
    return f'min by ({", ".join(GOLDEN_BY)}) ({{__name__=~"{names}"}})'

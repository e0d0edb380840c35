"""Generate the chart's Grafana dashboard (files/dashboard.json) from the operator's own PromQL.

The Triton panels use the functions in model_operator.scaling.promql — the queries the built-in
autoscaler and the canary analysis run — with a selector built from the dashboard's variables, so
what the dashboard shows is what the operator decides on. tests/unit/test_chart_monitoring.py
fails when the committed file differs from what this script writes.

    PYTHONPATH=operator python charts/model-operator/hack/dashboard.py          # rewrite the file
    PYTHONPATH=operator python charts/model-operator/hack/dashboard.py --check  # exit 1 on drift
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

CHART = Path(__file__).resolve().parent.parent
OUTPUT = CHART / "files" / "dashboard.json"
sys.path.insert(0, str(CHART.parent.parent / "operator"))

from model_operator.api.types import ScalingMetricType  # noqa: E402
from model_operator.resources.common import deployment_name  # noqa: E402
from model_operator.scaling import promql  # noqa: E402

UID = "model-operator-md"
DS = {"type": "prometheus", "uid": "${datasource}"}
WINDOW = "$__rate_interval"
MD_VAR = "${modeldeployment}"

# Triton pods of the selected ModelDeployment, both tracks / one track. The Deployment names come
# from the operator's naming function; the pod suffix from promql (the ReplicaSet hash and the
# pod's random part).
_STABLE = deployment_name(MD_VAR, "stable")
_CANARY = deployment_name(MD_VAR, "canary")
assert _CANARY.startswith(_STABLE), "the canary Deployment name extends the stable one"
_CANARY_INFIX = _CANARY[len(_STABLE):]
SEL = f'namespace="$namespace",pod=~"{_STABLE}({_CANARY_INFIX})?{promql.POD_SUFFIX}"'
TRACK_SEL = {
    "stable": f'namespace="$namespace",pod=~"{_STABLE}{promql.POD_SUFFIX}"',
    "canary": f'namespace="$namespace",pod=~"{_CANARY}{promql.POD_SUFFIX}"',
}
# The operator's own per-ModelDeployment series.
MD = 'namespace="$namespace",modeldeployment="$modeldeployment"'


def quantile_latency_ms(q: float, sel: str, window: str) -> str:
    """Latency quantile from Triton's latency summaries; for q=0.99 exactly promql.p99_latency_ms."""
    return promql.latency_quantile_ms(q, sel)


def mean_compute_ms(sel: str, window: str) -> str:
    return (
        f"(sum(rate(nv_inference_compute_infer_duration_us{{{sel}}}[{window}])) / 1000)"
        f" / clamp_min(sum(rate(nv_inference_request_success{{{sel}}}[{window}])), 1e-9)"
    )


def target(expr: str, legend: str, ref: str, **extra: Any) -> dict[str, Any]:
    return {"datasource": DS, "expr": expr, "legendFormat": legend, "refId": ref, "range": True, **extra}


class Layout:
    """Places panels left to right on Grafana's 24-column grid and numbers them."""

    def __init__(self) -> None:
        self.panels: list[dict[str, Any]] = []
        self.x = self.y = 0
        self.row_h = 0

    def row(self, title: str) -> None:
        self.newline()
        self.panels.append({"type": "row", "title": title, "collapsed": False, "id": len(self.panels) + 1,
                            "gridPos": {"h": 1, "w": 24, "x": 0, "y": self.y}, "panels": []})
        self.y += 1

    def newline(self) -> None:
        if self.x:
            self.y += self.row_h
            self.x = self.row_h = 0

    def add(self, panel: dict[str, Any], w: int = 8, h: int = 8) -> None:
        if self.x + w > 24:
            self.newline()
        panel["id"] = len(self.panels) + 1
        panel["gridPos"] = {"h": h, "w": w, "x": self.x, "y": self.y}
        self.panels.append(panel)
        self.x += w
        self.row_h = max(self.row_h, h)


def timeseries(title: str, description: str, targets: list[dict[str, Any]], unit: str = "short", **field: Any) -> dict[str, Any]:
    defaults: dict[str, Any] = {"unit": unit, "custom": {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 10, "showPoints": "never"}}
    defaults.update(field)
    return {
        "type": "timeseries",
        "title": title,
        "description": description,
        "datasource": DS,
        "targets": targets,
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom"}, "tooltip": {"mode": "multi", "sort": "none"}},
    }


def stat(title: str, description: str, targets: list[dict[str, Any]], unit: str = "short", **field: Any) -> dict[str, Any]:
    defaults: dict[str, Any] = {"unit": unit}
    defaults.update(field)
    return {
        "type": "stat",
        "title": title,
        "description": description,
        "datasource": DS,
        "targets": [{**t, "instant": True, "range": False} for t in targets],
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                    "textMode": "value_and_name", "colorMode": "value", "graphMode": "none", "orientation": "horizontal"},
    }


def build() -> dict[str, Any]:
    w = WINDOW
    lay = Layout()

    lay.row("Traffic")
    lay.add(timeseries(
        "Request rate",
        "Inference requests per second (successful + failed) over both tracks, and per track.",
        [
            target(promql.request_rate(SEL, w), "all", "A"),
            target(promql.failures_rate(SEL, w), "failed", "B"),
            target(promql.request_rate(TRACK_SEL["stable"], w), "stable", "C"),
            target(promql.request_rate(TRACK_SEL["canary"], w), "canary", "D"),
        ],
        unit="reqps",
    ))
    lay.add(timeseries(
        "Error ratio",
        "Failed / all requests (Triton's failures and the Python-backend model's own error count, over "
        "success + failure): what the canary analysis, the health check and the error-ratio alert use.",
        [
            target(promql.error_ratio(SEL, w), "all", "A"),
            target(promql.error_ratio(TRACK_SEL["canary"], w), "canary", "B"),
        ],
        unit="percentunit", min=0,
    ))
    lay.add(timeseries(
        "Latency: p50 / p99 (summary) and mean",
        "p50 and p99 come from nv_inference_request_summary_us, the latency summaries the operator starts "
        "Triton with (--metrics-config=summary_latencies=true): the slowest pod's quantile. They are what "
        "monitoring.p99LatencyMs and the canary's maxLatencyRatio judge. The mean is computed from the "
        "request-duration and request counters.",
        [
            target(quantile_latency_ms(0.5, SEL, w), "p50 (summary)", "A"),
            target(promql.p99_latency_ms(SEL, w), "p99 (summary)", "B"),
            target(promql.avg_latency_ms(SEL, w), "mean (counters)", "C"),
        ],
        unit="ms", min=0,
    ))
    lay.add(timeseries(
        "Queue and compute time per request",
        "Mean time a request waited in Triton's queue (the autoscaler's queueTime metric) and mean compute "
        "time, from Triton's cumulative duration counters.",
        [
            target(promql.queue_time_ms(SEL, w), "queue (mean)", "A"),
            target(mean_compute_ms(SEL, w), "compute (mean)", "B"),
        ],
        unit="ms", min=0,
    ))
    lay.add(timeseries(
        "Autoscaler inputs per replica",
        "The other built-in autoscaler metrics: inferences per second per replica and pending requests "
        "per replica.",
        [
            target(promql.scaling_query(ScalingMetricType.inference_rate, SEL, w), "inferences/s per replica", "A"),
            target(promql.scaling_query(ScalingMetricType.pending_requests, SEL, w), "pending per replica", "B"),
        ],
        min=0,
    ))

    lay.row("Replicas")
    lay.add(timeseries(
        "Desired vs ready replicas",
        "Replicas the ModelDeployment asks for (spec.serving.replicas, which the built-in autoscaler "
        "sets) and those Ready, from the operator; Triton pods reporting metrics, from Triton. Scale "
        "events are marked as annotations.",
        [
            target(f"max(model_operator_desired_replicas{{{MD}}})", "desired", "A"),
            target(f"max(model_operator_ready_replicas{{{MD}}})", "ready", "B"),
            target(f"max(model_operator_max_replicas{{{MD}}})", "max", "C"),
            target(f"count(count by (pod) (nv_inference_count{{{SEL}}}))", "Triton pods reporting", "D"),
        ],
        min=0, decimals=0,
    ), w=16)
    lay.add(timeseries(
        "Scale decisions (all ModelDeployments)",
        "Scale changes the built-in autoscaler made, by direction (operator-wide counter).",
        [target("sum by (direction) (increase(model_operator_scale_decisions_total[$__rate_interval]))", "{{direction}}", "A")],
        min=0, decimals=0,
    ))

    lay.row("Resources")
    lay.add(timeseries(
        "GPU utilisation",
        "Triton's nv_gpu_utilization: the mean over the ModelDeployment's GPUs (the autoscaler's "
        "gpuUtilization metric) and per pod and GPU.",
        [
            target(promql.gpu_utilization_percent(SEL), "mean", "A"),
            target(f"100 * nv_gpu_utilization{{{SEL}}}", "{{pod}} {{gpu_uuid}}", "B"),
        ],
        unit="percent", min=0, max=100,
    ))
    lay.add(timeseries(
        "GPU memory in use",
        "nv_gpu_memory_used_bytes per pod and GPU, and the GPUs' total memory.",
        [
            target(f"sum by (pod, gpu_uuid) (nv_gpu_memory_used_bytes{{{SEL}}})", "{{pod}} {{gpu_uuid}}", "A"),
            target(f"sum(nv_gpu_memory_total_bytes{{{SEL}}})", "total", "B"),
        ],
        unit="bytes", min=0,
    ))
    lay.add(timeseries(
        "CPU memory in use and CPU utilisation",
        "nv_cpu_memory_used_bytes per pod (left) and the mean nv_cpu_utilization (the autoscaler's "
        "cpuUtilization metric).",
        [
            target(f"sum by (pod) (nv_cpu_memory_used_bytes{{{SEL}}})", "{{pod}} memory", "A"),
            target(promql.cpu_utilization_percent(SEL), "CPU utilisation (mean)", "B"),
        ],
        unit="bytes", min=0,
    ))

    lay.row("Quality and optimization")
    lay.add(timeseries(
        "Golden-probe quality",
        "From the probe container beside each Triton: the worst replica's share of golden samples whose "
        "live top-1 answer matched the optimization report (1 = all) and its lowest cosine similarity, by "
        "artifact revision; 'passed' is 0 while a replica fails the quality gate; QualityDegraded is 1 "
        "while the operator reports it.",
        [
            target(f"min by (revision) (model_operator_golden_agreement{{{MD}}})", "agreement {{revision}}", "A"),
            target(f"min by (revision) (model_operator_golden_cosine{{{MD}}})", "cosine {{revision}}", "B"),
            target(f"min by (revision) (model_operator_golden_passed{{{MD}}})", "passed {{revision}}", "C"),
            target(f'max(model_operator_condition{{{MD},type="QualityDegraded",status="True"}})', "QualityDegraded", "D"),
        ],
        unit="percentunit", min=0, max=1,
    ))
    lay.add(stat(
        "Artifact size before / after optimization",
        "Size of the original model and of the optimized artifact the operator serves (status.artifact).",
        [target(f"max by (stage) (model_operator_artifact_size_bytes{{{MD}}})", "{{stage}}", "A")],
        unit="bytes",
    ))
    lay.add(stat(
        "Latency before / after optimization",
        "Per-batch latency the worker measured for the original and the optimized model "
        "(status.optimization.latencyMsBefore/After).",
        [target(f"max by (stage) (model_operator_optimization_latency_seconds{{{MD}}})", "{{stage}}", "A")],
        unit="s",
    ))
    lay.add(timeseries(
        "Conditions",
        "ModelDeployment conditions that are True (1) — Available, Progressing, Degraded, QualityDegraded, "
        "RolledBack, MetricsAvailable…",
        [target(f'max by (type) (model_operator_condition{{{MD},status="True"}})', "{{type}}", "A")],
        min=0, max=1, decimals=0,
    ), w=24, h=6)

    lay.row("Language models (model.task: generation)")
    lay.add(timeseries(
        "Time to first token and inter-token latency",
        "Means over the window from the generation model's own counters on Triton's metrics port "
        "(triton/generation_model.py): from a model instance taking a request (Triton's queue wait is not in it) "
        "to its first token, and between consecutive tokens. The autoscaler's timeToFirstToken and interTokenLatency metrics; the "
        "TTFT alert judges the first.",
        [
            target(promql.time_to_first_token_ms(SEL, w), "time to first token (mean)", "A"),
            target(promql.inter_token_latency_ms(SEL, w), "inter-token latency (mean)", "B"),
        ],
        unit="ms", min=0,
    ), w=12)
    lay.add(timeseries(
        "Generated tokens per second and requests in flight",
        "Tokens generated per second over all replicas, and per replica with requests in flight per "
        "replica (the autoscaler's tokensPerSecond and requestsInFlight metrics).",
        [
            target(f"sum(rate(model_operator_generated_tokens{{{SEL}}}[{w}]))", "tokens/s (all)", "A"),
            target(promql.tokens_per_second_per_replica(SEL, w), "tokens/s per replica", "B"),
            target(promql.in_flight_per_replica(SEL), "in flight per replica", "C"),
        ],
        min=0,
    ), w=12)

    lay.row("Operator")
    lay.add(timeseries(
        "Reconciles",
        "Reconciles per second by handler and result, and errors by error class.",
        [
            target("sum by (handler, result) (rate(model_operator_reconcile_total[$__rate_interval]))", "{{handler}} {{result}}", "A"),
            target("sum by (handler, error) (rate(model_operator_reconcile_errors_total[$__rate_interval]))", "error {{handler}} {{error}}", "B"),
        ],
        unit="ops", min=0,
    ))
    lay.add(timeseries(
        "Reconcile duration (p99)",
        "p99 of model_operator_reconcile_duration_seconds by handler.",
        [target("histogram_quantile(0.99, sum by (handler, le) (rate(model_operator_reconcile_duration_seconds_bucket[$__rate_interval])))", "{{handler}}", "A")],
        unit="s", min=0,
    ))
    lay.add(timeseries(
        "Optimization Jobs",
        "Optimization Jobs started, succeeded and failed (all ModelDeployments).",
        [
            target("sum(increase(model_operator_jobs_started_total[$__rate_interval]))", "started", "A"),
            target("sum(increase(model_operator_jobs_succeeded_total[$__rate_interval]))", "succeeded", "B"),
            target("sum(increase(model_operator_jobs_failed_total[$__rate_interval]))", "failed", "C"),
        ],
        min=0, decimals=0,
    ))
    lay.add(timeseries(
        "ModelDeployments by phase",
        "How many ModelDeployments are in each phase, in the selected namespace.",
        [target('sum by (phase) (model_operator_modeldeployments{namespace="$namespace"})', "{{phase}}", "A")],
        min=0, decimals=0,
    ))
    lay.add(timeseries(
        "Prometheus query errors",
        "Failed queries from the operator to Prometheus by cause (unreachable, timeout, garbage, error).",
        [target("sum by (cause) (rate(model_operator_prometheus_errors_total[$__rate_interval]))", "{{cause}}", "A")],
        unit="ops", min=0,
    ))

    variables = [
        {"name": "datasource", "label": "Prometheus", "type": "datasource", "query": "prometheus",
         "current": {}, "hide": 0, "refresh": 1, "options": []},
        {"name": "namespace", "label": "Namespace", "type": "query", "datasource": DS,
         "query": {"query": "label_values(model_operator_condition, namespace)", "refId": "namespace"},
         "definition": "label_values(model_operator_condition, namespace)",
         "current": {}, "hide": 0, "refresh": 2, "sort": 1, "includeAll": False, "multi": False, "options": []},
        {"name": "modeldeployment", "label": "ModelDeployment", "type": "query", "datasource": DS,
         "query": {"query": 'label_values(model_operator_condition{namespace="$namespace"}, modeldeployment)', "refId": "modeldeployment"},
         "definition": 'label_values(model_operator_condition{namespace="$namespace"}, modeldeployment)',
         "current": {}, "hide": 0, "refresh": 2, "sort": 1, "includeAll": False, "multi": False, "options": []},
    ]
    annotations = [
        {"builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"}, "enable": True, "hide": True,
         "iconColor": "rgba(0, 211, 255, 1)", "name": "Annotations & Alerts", "type": "dashboard"},
        {"name": "Scale events", "datasource": DS, "enable": True, "iconColor": "orange",
         "expr": f"changes(model_operator_desired_replicas{{{MD}}}[$__interval]) > 0",
         "step": "$__interval", "titleFormat": "desired replicas changed", "textFormat": "{{modeldeployment}}",
         "useValueForTime": False},
        {"name": "Rollbacks", "datasource": DS, "enable": True, "iconColor": "red",
         "expr": f'changes(model_operator_condition{{{MD},type="RolledBack",status="True"}}[$__interval]) > 0',
         "step": "$__interval", "titleFormat": "RolledBack changed", "textFormat": "{{modeldeployment}}",
         "useValueForTime": False},
    ]
    return {
        "uid": UID,
        "title": "model-operator / ModelDeployment",
        "description": "One ModelDeployment: traffic, latency, errors, replicas, GPU/CPU, golden-probe quality, "
                       "optimization result; and the operator. Generated by charts/model-operator/hack/dashboard.py.",
        "tags": ["model-operator", "triton", "inference"],
        "editable": True,
        "graphTooltip": 1,
        "schemaVersion": 39,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-3h", "to": "now"},
        "timezone": "browser",
        "templating": {"list": variables},
        "annotations": {"list": annotations},
        "panels": lay.panels,
        "links": [],
    }


def render() -> str:
    return json.dumps(build(), indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the committed dashboard differs")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if not OUTPUT.exists() or OUTPUT.read_text(encoding="utf-8") != text:
            print(f"{OUTPUT.relative_to(CHART.parent.parent)} is out of date; run {Path(__file__).relative_to(CHART.parent.parent)}", file=sys.stderr)
            return 1
        return 0
    OUTPUT.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())

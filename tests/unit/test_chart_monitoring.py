"""The chart's monitoring: the Grafana dashboard (generated from the operator's PromQL), the
PrometheusRule (`promtool check rules`, and `promtool test rules` with synthetic Triton and
operator series, so each alert is shown to fire for the ModelDeployment it should and only for
it), and the metric names both use."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "model-operator"


from kubetest import chartlib  # noqa: E402
from kubetest.binaries import unavailable  # noqa: E402 - after the sys.path setup


def _load(name: str, path: Path) -> Any:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module

dashboard_gen = _load("model_operator_chart_dashboard", CHART / "hack" / "dashboard.py")

PROMTOOL = shutil.which("promtool")


@pytest.fixture
def _helm_required() -> None:
    """Skipped on a machine without helm, failed under CI (kubetest.binaries.unavailable)."""
    if chartlib.helm_binary() is None:
        unavailable("helm not built: run hack/build-binaries.sh")


@pytest.fixture
def _promtool_required() -> None:
    if PROMTOOL is None:
        unavailable("promtool missing: apt-get install -y prometheus")


needs_helm = pytest.mark.usefixtures("_helm_required")
needs_promtool = pytest.mark.usefixtures("_promtool_required")

DASHBOARD = CHART / "files" / "dashboard.json"

from model_operator.triton import generation_model as gm  # noqa: E402 - the generation model's metrics, on Triton's port
from model_operator.triton.python_model import FAILURE_METRIC  # noqa: E402 - exported by the Python-backend model

# Exported by the decoupled generation model on Triton's metrics port, labelled like Triton's own series.
GENERATION_METRICS = {gm.TOKENS_METRIC, gm.TTFT_SUM_METRIC, gm.TTFT_COUNT_METRIC, gm.ITL_SUM_METRIC, gm.ITL_COUNT_METRIC, gm.IN_FLIGHT_METRIC}

# Triton's metrics (what tritonserver exports on :8002/metrics; the _bucket series only with
# --metrics-config=histogram_latencies=true).
TRITON_METRICS = {
    "nv_inference_request_success", "nv_inference_request_failure", "nv_inference_count", "nv_inference_exec_count",
    "nv_inference_request_duration_us", "nv_inference_queue_duration_us", "nv_inference_compute_infer_duration_us",
    "nv_inference_pending_request_count", "nv_inference_request_duration_us_bucket", "nv_inference_request_summary_us",
    "nv_gpu_utilization", "nv_gpu_memory_used_bytes", "nv_gpu_memory_total_bytes",
    "nv_cpu_utilization", "nv_cpu_memory_used_bytes",
}
ISSUE_ALERTS = {
    "ModelDeploymentNotReady", "ModelDeploymentOptimizationFailed", "ModelDeploymentErrorRatioHigh",
    "ModelDeploymentLatencyAboveSLO", "ModelDeploymentReplicasAtMax", "ModelDeploymentQualityDegraded",
    "ModelOperatorPrometheusUnreachable", "ModelDeploymentTimeToFirstTokenHigh", "ModelDeploymentGoldenProbeNotRunning",
}


def exported_operator_metrics() -> dict[str, set[str]]:
    """Sample names the operator exports (controller/metrics.py) -> their labels: its labelled
    metrics, and what its per-ModelDeployment collector gives for an object whose status has
    every exported field."""
    from prometheus_client.metrics import MetricWrapperBase

    from model_operator.controller import metrics

    out: dict[str, set[str]] = {}
    for obj in vars(metrics).values():
        if isinstance(obj, MetricWrapperBase):
            labels = set(obj._labelnames)
            kind = obj._type
            if kind == "counter":
                out[f"{obj._name}_total"] = labels
            elif kind == "histogram":
                for suffix in ("_bucket", "_sum", "_count"):
                    out[obj._name + suffix] = labels | ({"le"} if suffix == "_bucket" else set())
            else:
                out[obj._name] = labels
    collector = metrics.ModelDeploymentCollector()
    collector.export("ns", "md", {
        "phase": "Ready", "replicas": 2, "readyReplicas": 1, "conditions": [{"type": "Ready", "status": "True"}],
        "artifact": {"originalSizeBytes": 10, "sizeBytes": 5}, "optimization": {"latencyMsBefore": 2.0, "latencyMsAfter": 1.0},
    }, 4)
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(b"".join(collector.exposition()).decode()):
        for sample in family.samples:
            out.setdefault(sample.name, set()).update(sample.labels)
    return out


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def dashboard_exprs(board: dict[str, Any] | None = None) -> list[str]:
    board = board or dashboard()
    exprs = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    exprs += [a["expr"] for a in board["annotations"]["list"] if a.get("expr")]
    return exprs


def rule(monitoring_values: dict[str, Any] | None = None) -> dict[str, Any]:
    objs = chartlib.render(monitoring_values, release="mo", namespace="model-operator")
    return chartlib.one(objs, "PrometheusRule")


def rule_exprs(pr: dict[str, Any]) -> list[str]:
    return [r["expr"] for g in pr["spec"]["groups"] for r in g["rules"]]


_SERIES = re.compile(r"\b((?:nv|model_operator)_[a-zA-Z0-9_]+)(\{[^}]*\})?")


def series_used(exprs: list[str]) -> dict[str, set[str]]:
    """Metric name -> label names matched in selectors, over all expressions."""
    out: dict[str, set[str]] = {}
    for expr in exprs:
        for name, matchers in _SERIES.findall(expr):
            keys = set(re.findall(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)", matchers or ""))
            out.setdefault(name, set()).update(keys)
    return out


# --- the dashboard ---------------------------------------------------------------------------


def test_dashboard_is_generated_from_the_operator_promql() -> None:
    assert DASHBOARD.read_text() == dashboard_gen.render(), (
        "files/dashboard.json is out of date: PYTHONPATH=operator python charts/model-operator/hack/dashboard.py"
    )


def test_dashboard_queries_are_the_operator_queries() -> None:
    from model_operator.api.types import ScalingMetricType
    from model_operator.scaling import promql

    sel, w = dashboard_gen.SEL, dashboard_gen.WINDOW
    exprs = dashboard_exprs()
    for expected in [
        promql.request_rate(sel, w), promql.error_ratio(sel, w), promql.p99_latency_ms(sel, w), promql.avg_latency_ms(sel, w),
        promql.queue_time_ms(sel, w), promql.gpu_utilization_percent(sel), promql.cpu_utilization_percent(sel),
        *(promql.scaling_query(m, sel, w) for m in (ScalingMetricType.inference_rate, ScalingMetricType.pending_requests)),
    ]:
        assert expected in exprs, expected
    assert dashboard_gen.quantile_latency_ms(0.99, sel, w) == promql.p99_latency_ms(sel, w)


@pytest.mark.parametrize("md", ["digits", "a", "digits-triton", "a-triton-canary", "m" * 40])
def test_dashboard_selector_matches_the_pods_the_operator_names(md: str) -> None:
    """The dashboard's pod pattern, with $modeldeployment filled in, matches the pods of both
    tracks (and what promql.pod_matcher matches), and no other ModelDeployment's pods."""
    from model_operator.resources.common import deployment_name
    from model_operator.scaling import promql

    pattern = _match(r'pod=~"([^"]+)"', dashboard_gen.SEL).replace("${modeldeployment}", re.escape(md))
    for track in ("stable", "canary"):
        pod = f"{deployment_name(md, track)}-5d8f7c9b6-x2x9z"
        assert re.fullmatch(pattern, pod), (pattern, pod)
        operator_pattern = _match(r'pod=~"([^"]+)"', promql.pod_matcher(md, "ns", track=None))
        assert re.fullmatch(operator_pattern, pod)
    other = f"{deployment_name(md + '-x', 'stable')}-5d8f7c9b6-x2x9z"
    assert not re.fullmatch(pattern, other)


def test_dashboard_has_the_panels_the_issue_lists() -> None:
    board = dashboard()
    titles = [p["title"] for p in board["panels"]]
    for wanted in [
        "Request rate", "Latency: p50 / p99 (summary) and mean", "Queue and compute time per request", "Error ratio",
        "Desired vs ready replicas", "GPU utilisation", "GPU memory in use", "CPU memory in use and CPU utilisation",
        "Golden-probe quality", "Artifact size before / after optimization", "Latency before / after optimization",
        "Time to first token and inter-token latency", "Generated tokens per second and requests in flight",
    ]:
        assert wanted in titles, wanted
    assert "Scale events" in [a["name"] for a in board["annotations"]["list"]]
    assert [v["name"] for v in board["templating"]["list"]] == ["datasource", "namespace", "modeldeployment"]
    # The latency panel says where its quantiles come from.
    latency = next(p for p in board["panels"] if p["title"].startswith("Latency: p50"))
    assert "summary_latencies=true" in latency["description"]
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    for p in board["panels"]:
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24
        for t in p.get("targets", []):
            assert t["datasource"] == {"type": "prometheus", "uid": "${datasource}"}


# --- the rules -----------------------------------------------------------------------------


@needs_helm
def test_rule_alerts_are_the_issue_alerts() -> None:
    pr = rule()
    names = {r["alert"] for g in pr["spec"]["groups"] for r in g["rules"]}
    assert ISSUE_ALERTS <= names
    per_md = [r for r in pr["spec"]["groups"][0]["rules"]]
    for r in per_md:
        assert "namespace" in r["annotations"]["summary"] and "{{ $labels.modeldeployment }}" in r["annotations"]["summary"]
    off = rule({"prometheusRule": {"alerts": {"replicasAtMax": {"enabled": False}}}})
    assert "ModelDeploymentReplicasAtMax" not in {r["alert"] for g in off["spec"]["groups"] for r in g["rules"]}


@needs_helm
def test_metrics_used_are_exported() -> None:
    from model_operator.triton.pod_commands import PROBE_GAUGES

    exported = exported_operator_metrics()
    assert "model_operator_condition" in exported
    # The golden-set probe containers beside Triton export their own gauges (Prometheus adds pod).
    exported |= {metric: {"modeldeployment", "revision", "track", "pod"} for metric, _ in PROBE_GAUGES.values()}
    assert {"model_operator_golden_agreement", "model_operator_golden_passed", "model_operator_golden_probe_timestamp_seconds"} <= set(exported)
    exprs = dashboard_exprs() + rule_exprs(rule()) + rule_exprs(rule({"prometheusRule": {"alerts": {"latencySLO": {"source": "average"}}}}))
    used = series_used(exprs)
    for name, labels in sorted(used.items()):
        if name.startswith("nv_") or name == FAILURE_METRIC or name in GENERATION_METRICS:
            # FAILURE_METRIC, GENERATION_METRICS: exported by the project's Python-backend models on Triton's metrics port.
            assert name in TRITON_METRICS | {FAILURE_METRIC} | GENERATION_METRICS, f"{name} is not a Triton metric"
            # quantile: a label of Triton's latency summaries (0.5, 0.9, 0.95, 0.99, 0.999).
            assert labels <= {"namespace", "pod"} | ({"quantile"} if name == "nv_inference_request_summary_us" else set()), (name, labels)
            continue
        known = exported.get(name)
        assert known is not None, f"{name} is not exported by controller/metrics.py"
        # `namespace` may also be the scrape target's label (the operator's own namespace).
        assert labels <= known | {"namespace"}, (name, labels - known)


@needs_helm
def test_alert_pod_pattern_recovers_the_modeldeployment_name() -> None:
    """The label_replace in the rules gives the ModelDeployment's name back from its Triton pods'
    names, for both tracks, as the operator names them."""
    from model_operator.resources.common import deployment_name

    expr = next(e for e in rule_exprs(rule()) if "label_replace" in e)
    prefilter = _match(r'pod=~"([^"]+)"', expr)
    extract = _match(r'"modeldeployment", "\$1", "pod", "([^"]+)"', expr)
    for md in ("digits", "a", "digits-triton", "a-triton-canary", "x" * 40):
        for track in ("stable", "canary"):
            pod = f"{deployment_name(md, track)}-5d8f7c9b6-x2x9z"
            assert re.fullmatch(prefilter, pod)
            m = re.fullmatch(extract, pod)  # label_replace anchors the regex at both ends
            assert m and m.group(1) == md, (md, track, pod)


def _write_rules(pr: dict[str, Any], path: Path, annotations: bool = True) -> Path:
    groups = json.loads(json.dumps(pr["spec"]["groups"]))
    if not annotations:
        for g in groups:
            for r in g["rules"]:
                r.pop("annotations", None)
    path.write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
    return path


def _match(pattern: str, text: str) -> str:
    found = re.search(pattern, text)
    assert found is not None, (pattern, text)
    return found.group(1)


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=120)


@needs_helm
@needs_promtool
@pytest.mark.parametrize(
    "values",
    [
        {},
        {"prometheusRule": {"alerts": {"latencySLO": {"source": "average"}}, "additionalAlertLabels": {"team": "ml"}}},
        {"prometheusRule": {"alerts": {"errorRatio": {"threshold": 0.001, "window": "1m", "for": "0s"}}}},
    ],
    ids=["default", "average-latency", "edited"],
)
def test_promtool_check_rules(values: dict[str, Any], tmp_path: Path) -> None:
    path = _write_rules(rule(values), tmp_path / "rules.yaml")
    proc = _promtool("check", "rules", str(path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout + proc.stderr


POD = "{md}-triton-5d8f7c9b6-x2x9z"
CANARY_POD = "{md}-triton-canary-7c9d4f-abcde"


def _series(name: str, labels: dict[str, str], values: str) -> dict[str, str]:
    body = ",".join(f'{k}="{v}"' for k, v in labels.items())
    return {"series": f"{name}{{{body}}}", "values": values}


def _pods(md: str) -> list[str]:
    return [POD.format(md=md), CANARY_POD.format(md=md)]


def rule_tests(latency_source: str) -> dict[str, Any]:
    """Synthetic series for two ModelDeployments in team-a: `bad` breaks every alert, `good` none."""
    series: list[dict[str, str]] = []
    for md, fail_per_min, bucket in (("bad", 10, "1e+06"), ("good", 0, "100000")):
        for pod in _pods(md):
            lab = {"namespace": "team-a", "pod": pod, "model": md, "version": "1"}
            series += [
                _series("nv_inference_request_success", lab, "0+90x60"),
                _series("nv_inference_request_failure", lab, f"0+{fail_per_min}x60"),
                # 90 successes a minute; each took 0.9 s (bad) or 0.01 s (good) in total.
                _series("nv_inference_request_duration_us", lab, f"0+{81000000 if md == 'bad' else 900000}x60"),
            ]
            # All requests in the (100 ms, 1 s] bucket (bad) or the (10 ms, 100 ms] bucket (good).
            for le in ("10000", "100000", "1e+06", "+Inf"):
                filled = float(le) >= float(bucket) if le != "+Inf" else True
                series.append(_series("nv_inference_request_duration_us_bucket", {**lab, "le": le}, "0+90x60" if filled else "0x60"))
            # Triton's p99 summary: 900 ms (bad) or 50 ms (good); NaN quantiles of an idle pod are ignored.
            series.append(_series("nv_inference_request_summary_us", {**lab, "quantile": "0.99"}, "900000x60" if md == "bad" else "50000x60"))
            # A generation model's first tokens: 60 a minute, 3 s each (bad) or 0.1 s (good).
            series += [_series(gm.TTFT_SUM_METRIC, lab, f"0+{180 if md == 'bad' else 6}x60"), _series(gm.TTFT_COUNT_METRIC, lab, "0+60x60")]
        ops = {"namespace": "team-a", "modeldeployment": md}
        is_bad = md == "bad"
        series += [
            _series("model_operator_condition", {**ops, "type": "Available", "status": "True"}, "0x60" if is_bad else "1x60"),
            _series("model_operator_condition", {**ops, "type": "Degraded", "status": "True"}, "0x60"),
            _series("model_operator_condition", {**ops, "type": "OptimizationSucceeded", "status": "False"}, "1x60" if is_bad else "0x60"),
            _series("model_operator_condition", {**ops, "type": "QualityDegraded", "status": "True"}, "1x60" if is_bad else "0x60"),
            _series("model_operator_desired_replicas", ops, "8x60" if is_bad else "3x60"),
            _series("model_operator_max_replicas", ops, "8x60"),
        ]
    # The operator's own counters (namespace = the scrape target's, the operator's namespace).
    op = {"namespace": "model-operator", "pod": "mo-model-operator-abc-def"}
    series += [
        _series("model_operator_prometheus_errors_total", {**op, "cause": "unreachable"}, "0+6x60"),
        _series("model_operator_prometheus_errors_total", {**op, "cause": "error"}, "0+6x60"),
        _series("model_operator_reconcile_total", {**op, "handler": "timer", "result": "error"}, "0+30x60"),
        _series("model_operator_reconcile_total", {**op, "handler": "timer", "result": "ok"}, "0+30x60"),
    ]
    # `pyerr` fails only as the Python-backend model counts it: Triton calls those successes.
    for pod in _pods("pyerr"):
        lab = {"namespace": "team-a", "pod": pod.format(md="pyerr"), "model": "pyerr", "version": "1"}
        series += [
            _series("nv_inference_request_success", lab, "0+90x60"),
            _series("nv_inference_request_failure", lab, "0x60"),
            _series(FAILURE_METRIC, lab, "0+20x60"),
        ]
    bad = {"namespace": "team-a", "modeldeployment": "bad"}

    def fires(name: str, labels: dict[str, str], severity: str) -> dict[str, Any]:
        return {"eval_time": "45m", "alertname": name, "exp_alerts": [{"exp_labels": {**labels, "severity": severity}}]}

    checks = [
        fires("ModelDeploymentNotReady", bad, "warning"),
        fires("ModelDeploymentOptimizationFailed", bad, "warning"),
        {"eval_time": "45m", "alertname": "ModelDeploymentErrorRatioHigh", "exp_alerts": [
            {"exp_labels": {**bad, "severity": "critical"}},
            {"exp_labels": {"namespace": "team-a", "modeldeployment": "pyerr", "severity": "critical"}},
        ]},
        fires("ModelDeploymentLatencyAboveSLO", bad, "warning"),
        fires("ModelDeploymentReplicasAtMax", bad, "warning"),
        fires("ModelDeploymentTimeToFirstTokenHigh", bad, "warning"),
        fires("ModelDeploymentQualityDegraded", bad, "critical"),
        fires("ModelOperatorPrometheusUnreachable", {"namespace": "model-operator"}, "warning"),
        fires("ModelOperatorReconcileErrors", {"namespace": "model-operator"}, "warning"),
        # Nothing fires before its `for` has passed.
        {"eval_time": "5m", "alertname": "ModelDeploymentNotReady", "exp_alerts": []},
        {"eval_time": "20m", "alertname": "ModelDeploymentReplicasAtMax", "exp_alerts": []},
    ]
    return {
        "rule_files": ["rules.yaml"],
        "evaluation_interval": "1m",
        "tests": [{"interval": "1m", "input_series": series, "alert_rule_test": checks}],
    }


@needs_helm
@needs_promtool
@pytest.mark.parametrize("source", ["summary", "histogram", "average"])
def test_promtool_alerts_fire_for_the_right_modeldeployment(source: str, tmp_path: Path) -> None:
    pr = rule({"prometheusRule": {"alerts": {"latencySLO": {"source": source}}}})
    _write_rules(pr, tmp_path / "rules.yaml", annotations=False)
    tests = tmp_path / "tests.yaml"
    tests.write_text(yaml.safe_dump(rule_tests(source), sort_keys=False))
    proc = _promtool("test", "rules", str(tests))
    assert proc.returncode == 0, proc.stdout + proc.stderr

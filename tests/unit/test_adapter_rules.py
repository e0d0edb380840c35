"""prometheus-adapter rules for `autoscaling.engine: hpa` (model_operator.scaling.adapter): every
Pods metric the HPA asks for has exactly one rule; the queries, evaluated by promtool on synthetic
Triton series with the adapter's template filled in as it fills it, give each pod's value, and
the HPA's average over the pods is what the built-in scaler's own query says for the whole
ModelDeployment; the chart ships exactly these rules with its window."""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubetest import chartlib
from kubetest.binaries import unavailable
from model_operator.api.types import Autoscaling, ScalingMetricType
from model_operator.resources import autoscaling
from model_operator.scaling import adapter, promql

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "model-operator"
PROMTOOL = shutil.which("promtool")


def _generator() -> Any:
    spec = importlib.util.spec_from_file_location("model_operator_chart_adapter_rules", CHART / "hack" / "adapter_rules.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _hpa(metric: ScalingMetricType) -> dict[str, Any]:
    auto = Autoscaling.model_validate({"engine": "hpa", "metrics": [{"type": metric.value, "target": 5}]})
    return autoscaling.build_hpa("digits", "ml", auto)


def test_every_pods_metric_the_hpa_asks_for_has_one_rule() -> None:
    rules = adapter.adapter_rules("1m")["rules"]
    served = [r["name"]["as"] for r in rules]
    assert len(served) == len(set(served))
    for metric in ScalingMetricType:
        hpa = _hpa(metric)
        (entry,) = hpa["spec"]["metrics"]
        if metric == ScalingMetricType.cpu_utilization:
            assert entry["type"] == "Resource" and entry["resource"]["name"] == "cpu"
            assert not [r for r in rules if metric.value in r["name"]["as"]]
            continue
        assert entry["type"] == "Pods" and entry["pods"]["target"]["type"] == "AverageValue"
        name = entry["pods"]["metric"]["name"]
        (rule,) = [r for r in rules if r["name"]["as"] == name]
        # The series the adapter discovers is the one `matches` renames, labelled with the pod.
        series = rule["seriesQuery"].split("{", 1)[0]
        assert re.fullmatch(rule["name"]["matches"], series), rule
        assert set(rule["resources"]["overrides"]) == {"namespace", "pod"}
        assert "<<.LabelMatchers>>" in rule["metricsQuery"] and "by (<<.GroupBy>>)" in rule["metricsQuery"]


def _series(name: str, labels: dict[str, str], values: str) -> dict[str, str]:
    body = ",".join(f'{k}="{v}"' for k, v in labels.items())
    return {"series": f"{name}{{{body}}}", "values": values}


NS = "ml"
PODS = {"digits-triton-5d4f8-aaaaa": 1, "digits-triton-5d4f8-bbbbb": 4}  # pod -> load factor
OTHER = {"namespace": "other", "pod": "digits-triton-5d4f8-ccccc"}  # same name pattern, another namespace


def _input_series() -> list[dict[str, str]]:
    """Two pods of `digits` in `ml`, 15 s apart: each answers 10 requests/s; pod b waits 4 times
    longer in the queue, has 4 times the pending requests; a third pod elsewhere has huge values."""
    out = []
    for pod, f in [*PODS.items(), (OTHER["pod"], 100)]:
        lab = {"namespace": OTHER["namespace"] if f == 100 else NS, "pod": pod, "model": "digits", "version": "1"}
        out += [
            _series("nv_inference_request_success", lab, "0+150x40"),                 # 10/s
            _series("nv_inference_count", lab, f"0+{150 * f}x40"),                    # 10*f inferences/s
            _series("nv_inference_queue_duration_us", lab, f"0+{1500 * f}x40"),       # 100*f us/s -> 0.01*f ms per request
            _series("nv_inference_pending_request_count", lab, f"{2 * f}x40"),
        ]
    return out


# metric -> each pod's expected value (per load factor f)
EXPECTED = {
    ScalingMetricType.queue_time: lambda f: 0.01 * f,
    ScalingMetricType.inference_rate: lambda f: 10.0 * f,
    ScalingMetricType.pending_requests: lambda f: 2.0 * f,
}


@pytest.fixture
def _promtool_required() -> None:
    if PROMTOOL is None:
        unavailable("promtool missing: apt-get install -y prometheus")


def _filled(metric: ScalingMetricType) -> str:
    """The rule's query as prometheus-adapter sends it for `pods/*` in NS with the HPA's selector:
    the namespace and the selected pods' names as matchers, grouped by the pod label."""
    (rule,) = [r for r in adapter.adapter_rules("1m")["rules"] if r["name"]["as"] == adapter.hpa_metric_name(metric)]
    matchers = f'namespace="{NS}",pod=~"{"|".join(PODS)}"'
    return str(rule["metricsQuery"]).replace("<<.LabelMatchers>>", matchers).replace("<<.GroupBy>>", "pod")


@pytest.mark.usefixtures("_promtool_required")
@pytest.mark.parametrize("metric", list(EXPECTED))
def test_rule_queries_give_each_pods_value_and_the_hpa_average_is_the_scalers(metric: ScalingMetricType, tmp_path: Path) -> None:
    per_pod = {pod: EXPECTED[metric](f) for pod, f in PODS.items()}
    mean = sum(per_pod.values()) / len(per_pod)
    sel = promql.pod_matcher("digits", NS, track=None)
    tests = {
        "rule_files": [],
        "evaluation_interval": "15s",
        "tests": [{
            "interval": "15s",
            "input_series": _input_series(),
            "promql_expr_test": [
                {"expr": _filled(metric), "eval_time": "5m",
                 "exp_samples": [{"labels": f'{{pod="{pod}"}}', "value": v} for pod, v in per_pod.items()]},
                # The built-in scaler's query for the whole ModelDeployment = the HPA's mean over the pods.
                {"expr": promql.scaling_query(metric, sel, "1m"), "eval_time": "5m", "exp_samples": [{"labels": "{}", "value": mean}]},
            ],
        }],
    }
    path = tmp_path / "tests.yaml"
    path.write_text(yaml.safe_dump(tests, sort_keys=False))
    assert PROMTOOL is not None
    proc = subprocess.run([PROMTOOL, "test", "rules", str(path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_chart_file_is_generated_from_the_rules() -> None:
    gen = _generator()
    assert gen.OUTPUT.read_text() == gen.render(), (
        "files/prometheus-adapter-rules.yaml is out of date: PYTHONPATH=operator python charts/model-operator/hack/adapter_rules.py")


def test_chart_renders_the_rules_with_its_window() -> None:
    if chartlib.helm_binary() is None:
        unavailable("helm not built: run hack/build-binaries.sh (or set MODEL_OPERATOR_HELM)")
    assert not chartlib.find(chartlib.render(), "ConfigMap", "mo-model-operator-prometheus-adapter")  # off by default
    objs = chartlib.render({"prometheus": {"window": "45s"}, "prometheusAdapter": {"rules": {"enabled": True, "namespace": "monitoring"}}})
    cm = chartlib.one(objs, "ConfigMap", "mo-model-operator-prometheus-adapter")
    assert cm["metadata"]["namespace"] == "monitoring"
    assert yaml.safe_load(cm["data"]["config.yaml"]) == adapter.adapter_rules("45s")

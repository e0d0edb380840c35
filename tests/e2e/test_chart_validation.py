"""The chart against the real API server and the test Prometheus: every object it renders (with
default and edited values) passes the API server's server-side dry run with strict field
validation, and every PromQL expression in its dashboard and alert rules evaluates without error."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml

from kubetest import binaries

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "model-operator"


from kubetest import chartlib  # noqa: E402

VARIANTS: dict[str, Callable[[str], dict[str, Any]]] = {
    "default": lambda ns: {},
    "namespaced-rbac": lambda ns: {"rbac": {"namespaced": True}, "watchNamespaces": [ns]},
    "namespaced-rbac-no-cluster-role": lambda ns: {"rbac": {"namespaced": True, "clusterObservation": False}, "watchNamespaces": [ns]},
    "watch-list-cluster-role": lambda ns: {"watchNamespaces": [ns]},
    "s3-store": lambda ns: {"artifactStore": {"type": "s3", "s3": {"bucket": "models", "endpoint": "http://minio.storage:9000", "secret": "s3-creds"}}},
    "monitoring-off": lambda ns: {"serviceMonitor": {"enabled": False}, "prometheusRule": {"enabled": False}, "dashboards": {"enabled": False}},
    "standalone": lambda ns: {"operator": {"replicas": 1}, "leaderElection": {"enabled": False}},
    "secrets-by-name": lambda ns: {"rbac": {"secrets": {"names": ["registry-token"]}}},
    "edited": lambda ns: {
        "operator": {"replicas": 3, "nodeSelector": {"node-pool": "cpu"}, "tolerations": [{"key": "x", "operator": "Exists", "effect": "NoSchedule"}],
                     "podAnnotations": {"a": "b"}, "env": [{"name": "MODEL_OPERATOR_PROMETHEUS_WINDOW", "value": "2m"}]},
        "metrics": {"port": 9300},
        "prometheusRule": {"labels": {"release": "kps"}, "additionalAlertLabels": {"team": "ml"},
                           "alerts": {"latencySLO": {"source": "average"}}},
        "dashboards": {"annotations": {"grafana_folder": "ML"}},
        "imagePullSecrets": [{"name": "pull"}],
    },
}


@pytest.mark.parametrize("case", sorted(VARIANTS))
def test_rendered_objects_pass_server_side_dry_run(case: str, cluster: Any, chart_crds: list[str], namespace: str, tmp_path: Path) -> None:
    objs = chartlib.render(VARIANTS[case](namespace), release="mo", namespace=namespace)
    assert objs
    path = tmp_path / "rendered.yaml"
    path.write_text(yaml.safe_dump_all(objs, sort_keys=False))
    proc = cluster.kubectl("apply", "--dry-run=server", "--validate=strict", "-f", str(path), check=False)
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    assert len(lines) == len(objs), proc.stdout
    assert all("(server dry run)" in line for line in lines), proc.stdout


def test_dry_run_catches_a_broken_object(cluster: Any, chart_crds: list[str], namespace: str, tmp_path: Path) -> None:
    """The check above can fail: a misspelt field in a rendered object is refused."""
    objs = chartlib.render({}, release="mo", namespace=namespace)
    dep = chartlib.one(objs, "Deployment")
    dep["spec"]["template"]["spec"]["containers"][0]["securityContxt"] = {}
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(dep))
    proc = cluster.kubectl("apply", "--dry-run=server", "--validate=strict", "-f", str(path), check=False)
    assert proc.returncode != 0 and "securityContxt" in proc.stderr


# --- PromQL ---------------------------------------------------------------------------------

GRAFANA_VARIABLES = {
    "${modeldeployment}": "digits",
    "$modeldeployment": "digits",
    "$namespace": "default",
    "$__rate_interval": "1m",
    "$__interval": "30s",
    "$__range": "1h",
}


def _substitute(expr: str) -> str:
    for var, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(var, value)
    leftover = re.findall(r"\$(?!1\")[\w{]+", expr)
    assert not leftover, f"unknown variable {leftover} in {expr}"
    return expr


def dashboard_queries() -> list[tuple[str, str]]:
    board = json.loads((CHART / "files" / "dashboard.json").read_text())
    out = []
    for panel in board["panels"]:
        for t in panel.get("targets", []):
            out.append((f"panel {panel['title']!r} {t['refId']}", _substitute(t["expr"])))
    for a in board["annotations"]["list"]:
        if a.get("expr"):
            out.append((f"annotation {a['name']!r}", _substitute(a["expr"])))
    for v in board["templating"]["list"]:
        if v["type"] == "query":
            m = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", v["query"]["query"])
            assert m, v["query"]
            out.append((f"variable {v['name']}", _substitute(m.group(1))))
    return out


def rule_queries() -> list[tuple[str, str]]:
    out = []
    for values in ({}, {"prometheusRule": {"alerts": {"latencySLO": {"source": "average"}}}}):
        pr = chartlib.one(chartlib.render(values), "PrometheusRule")
        for g in pr["spec"]["groups"]:
            for r in g["rules"]:
                out.append((f"alert {r['alert']}", r["expr"]))
    return out


def _query(url: str, expr: str) -> tuple[bool, str]:
    data = urllib.parse.urlencode({"query": expr}).encode()
    try:
        with urllib.request.urlopen(f"{url}/api/v1/query", data=data, timeout=15) as r:
            body = json.loads(r.read())
    except urllib.error.HTTPError as e:
        body = json.loads(e.read() or b"{}")
    if body.get("status") != "success":
        return False, f"{body.get('errorType')}: {body.get('error')}"
    if body.get("warnings"):
        return False, f"warnings: {body['warnings']}"
    return True, body["data"]["resultType"]


def test_every_promql_expression_evaluates(prometheus: Any) -> None:
    if chartlib.helm_binary() is None:
        binaries.unavailable("helm not built: run hack/build-binaries.sh")
    queries = dashboard_queries() + rule_queries()
    assert len(queries) > 40
    failures = []
    for where, expr in queries:
        ok, detail = _query(prometheus.url, expr)
        if not ok:
            failures.append(f"{where}: {detail}\n    {expr}")
    assert not failures, "\n".join(failures)
    # The check can fail: a malformed expression is reported.
    ok, detail = _query(prometheus.url, "sum(rate(nv_inference_count[1m]) by")
    assert not ok and "parse" in detail.lower()

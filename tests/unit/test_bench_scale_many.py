"""The pure pieces of benchmarks/scale_many.py: reading the API server's request counters,
grouping Prometheus' query log into polls, and the spec it makes (a user's defaults)."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCH))

from model_operator.api.validation import load_spec  # noqa: E402

sm = importlib.import_module("scale_many")

METRICS = """\
# HELP apiserver_request_total Counter of apiserver requests
# TYPE apiserver_request_total counter
apiserver_request_total{code="200",group="apps",resource="deployments",scope="namespace",subresource="",verb="PATCH"} 7
apiserver_request_total{code="201",group="batch",resource="jobs",scope="namespace",subresource="",verb="POST"} 3
apiserver_request_total{code="429",group="",resource="pods",scope="namespace",subresource="",verb="LIST"} 2
apiserver_request_total{code="200",group="serving.model-operator.io",resource="modeldeployments",scope="namespace",subresource="status",verb="PATCH"} 5
apiserver_request_total{code="200",group="coordination.k8s.io",resource="leases",scope="namespace",subresource="",verb="PUT"} 100
apiserver_request_total{code="200",group="",resource="pods",scope="cluster",subresource="",verb="WATCH"} 4
apiserver_request_duration_seconds_count{verb="PATCH"} 99
"""


def test_requests_are_summed_by_verb_resource_and_code() -> None:
    counts = sm.parse_requests(METRICS)
    assert counts[("PATCH", "modeldeployments/status", "200")] == 5
    assert counts[("POST", "jobs", "201")] == 3
    assert sm.throttled(counts) == 2
    assert sm.created(counts, "jobs") == 3 and sm.created(counts, "pods") == 0
    assert ("PATCH", "deployments", "200") in counts and len(counts) == 6


def test_writes_leave_out_other_kinds_reads_and_watches() -> None:
    counts = sm.parse_requests(METRICS)
    writes = sm.by_verb_resource(counts, verbs=sm.WRITE_VERBS)
    assert writes == {"PATCH deployments": 7, "PATCH modeldeployments/status": 5, "POST jobs": 3}  # leases are not the operator's
    assert "WATCH pods" not in sm.by_verb_resource(counts)
    assert sm.by_verb_resource(counts)["LIST pods"] == 2


def test_delta_keeps_only_what_grew() -> None:
    before = sm.parse_requests(METRICS)
    after = dict(before)
    after[("POST", "jobs", "201")] += 4
    after[("GET", "services", "200")] = 1
    assert sm.delta(after, before) == {("POST", "jobs", "201"): 4, ("GET", "services", "200"): 1}


def test_queries_are_grouped_into_polls_by_gaps() -> None:
    assert sm.polls([10.0, 10.2, 10.3, 15.0, 15.1, 20.5]) == [3, 2, 1]
    assert sm.polls([]) == []


def test_query_log_times_in_the_window() -> None:
    log = "\n".join([
        '{"params":{"query":"sum(x)"},"ts":"2026-12-02T17:00:00.500Z"}',
        '{"params":{"query":"sum(y)"},"ts":"2026-12-02T17:00:10Z"}',
        "not json",
    ])
    t0 = 1796230800.0  # 2026-12-02T17:00:00Z
    assert sm.query_log_times(log, t0, t0 + 5) == [t0 + 0.5]
    assert len(sm.query_log_times(log, t0, t0 + 20)) == 2


def test_the_operator_metric_sum_excludes_lines() -> None:
    text = ('model_operator_reconcile_total{handler="resume",result="ok"} 4.0\n'
            'model_operator_reconcile_total{handler="autoscale",result="ok"} 90.0\n'
            'model_operator_reconcile_totalx 1\n')
    assert sm.metric_sum(text, "model_operator_reconcile_total") == 94
    assert sm.metric_sum(text, "model_operator_reconcile_total", exclude=lambda ln: "autoscale" in ln) == 4


def test_served_specs_keep_a_users_monitoring_and_autoscaling_defaults() -> None:
    served = load_spec(sm.spec_for(3, device=False))
    assert served.monitoring.golden_probe.enabled and served.monitoring.service_monitor
    assert served.autoscaling is not None and served.autoscaling.enabled and served.autoscaling.engine.value == "operator"
    assert load_spec(sm.spec_for(3, device=True)).target.value == "device"


def test_operator_writes_are_applies_md_writes_and_its_own_deletes() -> None:
    writes = {"APPLY secrets": 3, "DELETE pods": 9, "PATCH modeldeployments/status": 5, "PUT jobs/status": 4, "POST events": 2}
    mine = sm.operator_writes(writes, {"Job delete": 2, "Secret apply": 3, "Service delete": 0})
    assert mine == {"APPLY secrets": 3, "PATCH modeldeployments/status": 5, "DELETE Job (operator)": 2}


def test_status_changes_count_objects_per_key_and_conditions_per_field() -> None:
    ready = {"type": "Ready", "status": "True", "lastTransitionTime": "t0"}
    before = {"a": {"phase": "Ready", "conditions": [ready]}, "b": {"phase": "Ready", "access": {"expiresAt": 1}}}
    after = {"a": {"phase": "Ready", "conditions": [{**ready, "lastTransitionTime": "t1"}]},
             "b": {"phase": "Ready", "access": {"expiresAt": 2}}, "c": {"phase": "Pending"}}
    assert sm.status_changes(before, after) == {"access": 1, "conditions[Ready].lastTransitionTime": 1, "phase": 1}
    assert sm.status_changes(after, after) == {}


def test_the_workers_page_sets_each_cold_start_beside_its_rounds_first_of_the_same_size(tmp_path: Path) -> None:
    import argparse

    def row(count: int, workers: int, ready: float) -> dict[str, object]:
        return {"count": count, "workers": workers, "cold_ready_s": ready, "cold_marks": {"50%": ready / 3, "90%": ready * 0.8},
                "cold_cpu_s": 40.0, "cold_requests": 12000.0, "cold_throttled": 0.0, "cold_peak_mib": 150.0, "load_after": 2.0}

    out = tmp_path / "page.md"
    args = argparse.Namespace(out=str(out), device_share=0.3)
    sm.write_workers_page(args, "test machine", [[row(1000, 4, 200.0), row(1000, 16, 100.0), row(2000, 4, 500.0), row(2000, 16, 600.0)],
                                                 [row(1000, 4, 100.0), row(1000, 16, 150.0)]])
    rows = [ln.split("|")[1:-1] for ln in out.read_text().splitlines() if ln.startswith("| ") and ln[2].isdigit()]
    assert [(r[0].strip(), r[1].strip(), r[2].strip(), r[5].strip(), r[6].strip()) for r in rows] == [
        ("1", "1000", "4", "200", "1.00"), ("1", "1000", "16", "100", "0.50"), ("1", "2000", "4", "500", "1.00"),
        ("1", "2000", "16", "600", "1.20"), ("2", "1000", "4", "100", "1.00"), ("2", "1000", "16", "150", "1.50")]

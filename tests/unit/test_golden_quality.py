"""The golden-set probe without Jobs: the probe container's gauges, the one fleet query that reads
them, and the status.quality / QualityDegraded verdict drawn from its answer (missing, failing and
stale readings are Unknown, never a pass)."""

from __future__ import annotations

import threading
from typing import Any

from test_fleet_scaler import FakeSyncProm

from model_operator.config import OperatorConfig
from model_operator.controller.reconcile import Reconciler
from model_operator.plan import Observed
from model_operator.plan.monitoring import judge_quality, stale_after
from model_operator.scaling import promql
from model_operator.scaling.fleet import FleetHealth, quality_rows
from model_operator.scaling.prometheus import Prometheus, PrometheusError, vector_of
from model_operator.triton.client import ProbeResult
from model_operator.triton.pod_commands import PROBE_GAUGES, probe_values

NOW = 1_000_000.0
ROW = {"time": NOW - 10, "ok": 1.0, "passed": 1.0, "agreement": 1.0, "cosine": 0.99991234, "samples": 16.0}


def test_a_matching_probe_reports_its_numbers_and_quality_is_not_degraded() -> None:
    quality, status, reason = judge_quality({"r1": ROW}, None, "r1", NOW, 60)
    assert (status, reason) == ("False", "GoldenSetMatches")
    assert quality == {"time": NOW - 10, "passed": True, "revision": "r1", "agreement": 1.0, "cosine": 0.9999, "samples": 16,
                       "reason": "every replica's answers match the report"}


def test_a_failing_replica_degrades_quality_with_the_worst_numbers() -> None:
    quality, status, reason = judge_quality({"r1": {**ROW, "passed": 0.0, "agreement": 0.25}}, None, "r1", NOW, 60)
    assert (status, reason, quality["passed"], quality["agreement"]) == ("True", "GoldenSetDrift", False, 0.25)
    assert "agreement 0.25" in quality["reason"]


def test_missing_failing_stale_or_unreadable_readings_are_unknown_never_a_pass() -> None:
    cases: dict[str, tuple[dict[str, dict[str, float]] | None, str | None]] = {
        "NoProbeData": ({}, None),
        # Only the previous revision's pods have answered: nothing is known of the served one.
        "NoProbeData ": ({"r0": ROW}, None),
        "ProbeStale": ({"r1": {**ROW, "time": NOW - stale_after(60) - 1}}, None),
        # A replica could not compare (Triton answered with a wrong shape, no golden set): the other replicas' pass is not the MD's.
        "ProbeFailing": ({"r1": {**ROW, "ok": 0.0}}, None),
        "ProbeFailing ": ({"r1": {k: v for k, v in ROW.items() if k != "passed"}}, None),
        "MetricsUnavailable": (None, "Prometheus at http://p is unreachable: ConnectionError"),
    }
    for expected, (rows, error) in cases.items():
        quality, status, reason = judge_quality(rows, error, "r1", NOW, 60)
        assert (status, reason) == ("Unknown", expected.strip()), expected
        assert quality["passed"] is None and quality["revision"] == "r1" and quality["reason"], expected
    # Just inside the limit is still a verdict.
    assert judge_quality({"r1": {**ROW, "time": NOW - stale_after(60) + 1}}, None, "r1", NOW, 60)[1] == "False"


def test_a_drift_seen_while_stale_is_still_unknown() -> None:
    """A stopped probe's last drift is old news too: stale wins over any verdict."""
    rows = {"r1": {**ROW, "passed": 0.0, "time": NOW - 3600}}
    assert judge_quality(rows, None, "r1", NOW, 60)[1:] == ("Unknown", "ProbeStale")


def test_the_probe_container_exports_a_verdict_or_only_that_it_could_not_compare() -> None:
    passed = probe_values(ProbeResult(True, 16, agreement=0.9375, cosine=0.99, max_abs_error=0.01), NOW)
    assert passed == {"time": NOW, "ok": 1.0, "passed": 1.0, "agreement": 0.9375, "cosine": 0.99, "maxAbsError": 0.01, "samples": 16.0}
    failed = probe_values(ProbeResult(False, 16, reason="output y: shape [16, 3], expected [16, 10]"), NOW)
    assert failed["passed"] == 0.0 and failed["agreement"] is None and failed["ok"] == 1.0
    error = probe_values("127.0.0.1:8000: inference on model d failed: boom", NOW)
    assert error["ok"] == 0.0 and error["time"] == NOW
    assert all(error[k] is None for k in ("passed", "agreement", "cosine", "maxAbsError", "samples")), "no verdict without a comparison"
    assert set(passed) == set(PROBE_GAUGES)


def test_one_query_answers_every_mds_every_revision() -> None:
    query = promql.fleet_golden_quality()
    assert query.startswith("min by (__name__, namespace, modeldeployment, revision) (")
    for metric in ("model_operator_golden_passed", "model_operator_golden_probe_timestamp_seconds", "model_operator_golden_probe_ok"):
        assert metric in query
    # What Prometheus answers (two MDs, one of them mid-rollout with two revisions), regrouped.
    data = {"resultType": "vector", "result": [
        {"metric": {"__name__": "model_operator_golden_passed", "namespace": "a", "modeldeployment": "m", "revision": "r1"}, "value": [NOW, "1"]},
        {"metric": {"__name__": "model_operator_golden_probe_timestamp_seconds", "namespace": "a", "modeldeployment": "m", "revision": "r1"},
         "value": [NOW, "999990"]},
        {"metric": {"__name__": "model_operator_golden_passed", "namespace": "a", "modeldeployment": "m", "revision": "r2"}, "value": [NOW, "0"]},
        {"metric": {"__name__": "model_operator_golden_agreement", "namespace": "b", "modeldeployment": "m", "revision": "r1"}, "value": [NOW, "0.5"]},
        {"metric": {"__name__": "model_operator_golden_max_abs_error", "namespace": "b", "modeldeployment": "m", "revision": "r1"}, "value": [NOW, "3"]},
    ]}
    rows = quality_rows(vector_of(data, promql.GOLDEN_BY))
    assert rows == {("a", "m"): {"r1": {"passed": 1.0, "time": 999990.0}, "r2": {"passed": 0.0}}, ("b", "m"): {"r1": {"agreement": 0.5}}}


class QualityProm(FakeSyncProm):
    def query_by(self, promql_text: str, labels: tuple[str, ...]) -> dict[tuple[str, ...], float]:
        super().query_by(promql_text, labels)
        return {("model_operator_golden_passed", "ns", name, "r1"): 1.0 for name in ("busy", "idle")}


def _quality_in_threads(prom: FakeSyncProm, names: list[str]) -> list[Observed]:
    reconciler = Reconciler(None, OperatorConfig(), prom=Prometheus("http://unused"))  # type: ignore[arg-type]
    reconciler.fleet_health = FleetHealth(prom, "20s")  # type: ignore[arg-type]
    observed = [Observed() for _ in names]
    threads = [threading.Thread(target=reconciler._take_quality, args=(o, "ns", n)) for o, n in zip(observed, names, strict=True)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return observed


def test_fifty_reconcile_threads_share_one_quality_query() -> None:
    prom = QualityProm()
    observed = _quality_in_threads(prom, ["busy"] * 25 + ["idle"] * 24 + ["unprobed"])
    assert prom.queries == [promql.fleet_golden_quality()]
    assert observed[0].quality == {"r1": {"passed": 1.0}} and observed[-1].quality == {}
    assert all(o.quality_error is None for o in observed)


def test_a_failed_quality_poll_is_every_mds_error_asked_once() -> None:
    prom: Any = FakeSyncProm(PrometheusError("timeout", "Prometheus at http://p did not answer within 2s"))
    observed = _quality_in_threads(prom, ["busy"] * 10)
    assert len(prom.queries) == 1
    assert all(o.quality is None and o.quality_error == "Prometheus at http://p did not answer within 2s" for o in observed)


def _scrape(port: int) -> dict[str, str]:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        lines = r.read().decode().splitlines()
    return {line.rsplit(" ", 1)[0]: line.rsplit(" ", 1)[1] for line in lines if line.startswith("model_operator_golden")}


def test_the_probe_command_serves_its_verdict_on_its_metrics_port(monkeypatch: Any) -> None:
    import argparse
    import signal
    import socket

    from model_operator.triton import pod_commands

    monkeypatch.setattr(signal, "signal", lambda *a: None)  # the command's SIGTERM handler is not pytest's business

    def run(outcome: Any) -> tuple[int, dict[str, str]]:
        monkeypatch.setattr(pod_commands, "_probe_once", lambda *a, **k: outcome)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        args = argparse.Namespace(model="digits", golden="/golden/golden.npz", triton="127.0.0.1:8000", interval=5.0, samples=16,
                                  gate_json="{}", revision="r1", track="stable", port=port, once=True)
        return pod_commands.probe_main(args), _scrape(port)

    rc, series = run(ProbeResult(True, 16, agreement=1.0, cosine=0.999))
    labels = '{modeldeployment="digits",revision="r1",track="stable"}'
    assert rc == 0
    assert series[f"model_operator_golden_passed{labels}"] == "1.0" and series[f"model_operator_golden_agreement{labels}"] == "1.0"
    assert float(series[f"model_operator_golden_probe_timestamp_seconds{labels}"]) > 1.7e9
    assert "model_operator_golden_max_abs_error" + labels not in series, "no value, no series (not a 0)"

    rc, series = run("127.0.0.1:8000: inference on model digits failed: boom")
    assert rc == 1 and series[f"model_operator_golden_probe_ok{labels}"] == "0.0"
    assert not [k for k in series if k.startswith(("model_operator_golden_passed", "model_operator_golden_agreement"))]

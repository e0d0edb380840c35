"""The operator's per-ModelDeployment collector (its series and the count by phase), fed from kopf's
handler threads while Prometheus scrapes."""

from __future__ import annotations

import gzip
import threading
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from model_operator.controller import metrics, metrics_server
from model_operator.controller.metrics import ModelDeploymentCollector


def _phase_counts(collector: ModelDeploymentCollector) -> dict[tuple[str, str], float]:
    return {(dict(k[1])["namespace"], dict(k[1])["phase"]): v for k, v in _scrape(collector).items()
            if k[0] == "model_operator_modeldeployments" and v}


def _set(collector: ModelDeploymentCollector, key: tuple[str, str], phase: str | None) -> None:
    collector.export(key[0], key[1], {"phase": phase} if phase else {}, 0)


def test_a_phase_change_moves_one_object_between_counts() -> None:
    collector = ModelDeploymentCollector()
    _set(collector, ("a", "m1"), "Optimizing")
    _set(collector, ("a", "m2"), "Optimizing")
    _set(collector, ("b", "m1"), "Ready")
    _set(collector, ("a", "m1"), "Ready")
    _set(collector, ("a", "m1"), "Ready")  # a repeat changes nothing
    assert _phase_counts(collector) == {("a", "Optimizing"): 1, ("a", "Ready"): 1, ("b", "Ready"): 1}
    collector.forget("a", "m2")
    collector.forget("a", "gone")  # never seen: nothing to take away
    _set(collector, ("b", "m1"), None)  # a status without a phase counts nowhere
    assert _phase_counts(collector) == {("a", "Ready"): 1}


def test_concurrent_reconciles_leave_exact_counts() -> None:
    """The dict the gauge used to be rebuilt from was iterated while other threads added to it
    ("dictionary changed size during iteration" failed reconciles at 300 objects)."""
    collector = ModelDeploymentCollector()
    phases = ("Pending", "Optimizing", "Deploying", "Ready")

    def churn(worker: int) -> None:
        for i in range(2000):
            _set(collector, ("ns", f"m{worker}-{i % 50}"), phases[i % len(phases)])
        for i in range(50):
            _set(collector, ("ns", f"m{worker}-{i}"), "Ready" if i % 2 else "Failed")

    threads = [threading.Thread(target=churn, args=(w,)) for w in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert _phase_counts(collector) == {("ns", "Ready"): 8 * 25, ("ns", "Failed"): 8 * 25}


def _scrape(collector: ModelDeploymentCollector) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The collector's text as prometheus_client's parser reads it (a family listed twice, or a
    line it cannot parse, fails here)."""
    text = b"".join(collector.exposition()).decode()
    families = list(text_string_to_metric_families(text))
    names = [f.name for f in families]
    assert len(names) == len(set(names)), names
    assert all(f.type == "gauge" for f in families)
    return {(f.name if s.name == f.name else s.name, tuple(sorted(s.labels.items()))): s.value
            for f in families for s in f.samples}


def _md(name: str, **labels: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted({"namespace": "ns", "modeldeployment": name, **labels}.items()))


def test_the_collector_exports_each_objects_status_as_the_scrape_sees_it() -> None:
    collector = ModelDeploymentCollector()
    collector.export("ns", "a", {
        "replicas": 3, "readyReplicas": 2,
        "conditions": [{"type": "Ready", "status": "True"}, {"type": "QualityDegraded", "status": "Unknown"}],
        "artifact": {"originalSizeBytes": 1000, "sizeBytes": 250}, "optimization": {"latencyMsBefore": 8.0},
    }, 6)
    collector.export("ns", "b", {"phase": "Pending"}, 0)
    got = _scrape(collector)
    assert got[("model_operator_desired_replicas", _md("a"))] == 3
    assert got[("model_operator_ready_replicas", _md("a"))] == 2
    assert got[("model_operator_max_replicas", _md("a"))] == 6
    assert got[("model_operator_artifact_size_bytes", _md("a", stage="original"))] == 1000
    assert got[("model_operator_artifact_size_bytes", _md("a", stage="optimized"))] == 250
    assert got[("model_operator_optimization_latency_seconds", _md("a", stage="before"))] == 0.008
    assert ("model_operator_optimization_latency_seconds", _md("a", stage="after")) not in got
    conditions = {dict(k[1])["type"] + "=" + dict(k[1])["status"]: v for k, v in got.items()
                  if k[0] == "model_operator_condition" and dict(k[1])["modeldeployment"] == "a"}
    assert conditions == {"Ready=True": 1, "Ready=False": 0, "Ready=Unknown": 0,
                          "QualityDegraded=True": 0, "QualityDegraded=False": 0, "QualityDegraded=Unknown": 1}
    assert got[("model_operator_desired_replicas", _md("b"))] == 0
    assert not [k for k in got if k[0] == "model_operator_condition" and dict(k[1])["modeldeployment"] == "b"]


def test_a_new_status_replaces_the_old_series_and_forget_drops_them() -> None:
    collector = ModelDeploymentCollector()
    collector.export("ns", "a", {"conditions": [{"type": "Ready", "status": "True"}, {"type": "Degraded", "status": "True"}],
                                 "artifact": {"sizeBytes": 5}}, 2)
    collector.export("ns", "a", {"conditions": [{"type": "Ready", "status": "False"}]}, 2)
    got = _scrape(collector)
    assert got[("model_operator_condition", _md("a", type="Ready", status="False"))] == 1
    assert got[("model_operator_condition", _md("a", type="Ready", status="True"))] == 0
    # A type or an artifact the status no longer holds has no series left to alert on.
    assert not [k for k in got if "Degraded" in dict(k[1]).get("type", "") or k[0] == "model_operator_artifact_size_bytes"]
    collector.forget("ns", "a")
    collector.forget("ns", "never-seen")
    assert not [k for k in _scrape(collector) if k[0].startswith("model_operator_")]


def test_scrapes_while_reconciles_export_see_whole_objects() -> None:
    collector = ModelDeploymentCollector()
    stop = threading.Event()

    def reconcile(worker: int) -> None:
        i = 0
        while not stop.is_set():
            collector.export("ns", f"m{worker}-{i % 200}", {"replicas": 1, "conditions": [{"type": "Ready", "status": "True"}]}, 1)
            if i % 3 == 0:
                collector.forget("ns", f"m{worker}-{(i + 100) % 200}")
            i += 1

    threads = [threading.Thread(target=reconcile, args=(w,)) for w in range(4)]
    for th in threads:
        th.start()
    try:
        for _ in range(50):
            got = _scrape(collector)
            desired = {dict(k[1])["modeldeployment"] for k in got if k[0] == "model_operator_desired_replicas"}
            ready = {dict(k[1])["modeldeployment"] for k in got if k[0] == "model_operator_condition"}
            assert desired == ready  # each object whole in a scrape, never half exported
    finally:
        stop.set()
        for th in threads:
            th.join()


def test_a_fleets_series_come_in_pieces_with_each_family_listed_once() -> None:
    collector = ModelDeploymentCollector()
    for i in range(1234):
        collector.export("team-a", f"md-{i}", {"phase": "Ready" if i % 2 else "Deploying", "replicas": i % 3,
                                               "conditions": [{"type": "Available", "status": "True"}]}, 3)
    pieces = list(collector.exposition())
    conditions = sum(len(p) for p in pieces if b"model_operator_condition{" in p)
    assert max(len(p) for p in pieces) * 2 < conditions, "a piece holds a few hundred objects, not a family's whole text"
    got = _scrape(collector)
    assert sum(1 for k in got if k[0] == "model_operator_desired_replicas") == 1234
    assert got[("model_operator_modeldeployments", (("namespace", "team-a"), ("phase", "Ready")))] == 617
    assert got[("model_operator_desired_replicas", (("modeldeployment", "md-1000"), ("namespace", "team-a")))] == 1000 % 3


def test_label_values_are_quoted_as_the_text_format_asks() -> None:
    collector = ModelDeploymentCollector()
    odd = 'a"b\\c\nd'
    collector.export("ns", odd, {"replicas": 1}, 0)
    assert got_name(_scrape(collector)) == {odd}


def got_name(got: dict[tuple[str, tuple[tuple[str, str], ...]], float]) -> set[str]:
    return {dict(k[1])["modeldeployment"] for k in got if k[0] == "model_operator_desired_replicas"}


def test_the_endpoint_serves_the_registry_and_the_fleet_plain_and_gzipped() -> None:
    metrics.MODELDEPLOYMENTS.export("served-ns", "served-md", {"phase": "Ready", "replicas": 2}, 0)
    metrics.API_WRITES.labels("Secret", "apply").inc()
    server = metrics_server.serve(0, "127.0.0.1")
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/metrics"
        plain = urllib.request.urlopen(url, timeout=10)
        assert plain.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        zipped = urllib.request.urlopen(urllib.request.Request(url, headers={"Accept-Encoding": "gzip"}), timeout=10)
        assert zipped.headers["Content-Encoding"] == "gzip"
        for text in (plain.read().decode(), gzip.decompress(zipped.read()).decode()):
            samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                       for f in text_string_to_metric_families(text) for s in f.samples}
            assert samples[("model_operator_desired_replicas", (("modeldeployment", "served-md"), ("namespace", "served-ns")))] == 2
            assert samples[("model_operator_api_writes_total", (("kind", "Secret"), ("verb", "apply")))] >= 1
    finally:
        server.shutdown()
        metrics.MODELDEPLOYMENTS.forget("served-ns", "served-md")

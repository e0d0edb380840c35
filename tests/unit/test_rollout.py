"""Rollout planning and analysis verdicts, from plain values."""

from __future__ import annotations

from typing import Any

import pytest

from model_operator.api.validation import load_spec
from model_operator.resources import rollout as ro

OLD = ro.Track("pvc://s/ns/m/aaa", "a" * 64, "aaa")
NEW = ro.Track("pvc://s/ns/m/bbb", "b" * 64, "bbb")


def spec(strategy: str = "rolling", weight: int = 25):
    return load_spec({"model": {"uri": "s3://b/m.onnx"}, "serving": {"replicas": 4},
                      "rollout": {"strategy": strategy, "canary": {"weight": weight}}})


def test_first_artifact_serves_everything() -> None:
    plan = ro.plan_tracks(spec("canary"), {}, NEW, 4)
    assert plan == ro.TrackPlan(NEW, 4, None, 0, "steady")


def test_canary_takes_its_weight_of_replicas() -> None:
    plan = ro.plan_tracks(spec("canary", 25), {"stable": OLD.to_status()}, NEW, 4)
    assert (plan.stable, plan.stable_replicas, plan.canary, plan.canary_replicas, plan.mode) == (OLD, 3, NEW, 1, "canary")


@pytest.mark.parametrize(("total", "weight", "expected"), [(1, 10, 1), (2, 10, 1), (10, 10, 1), (10, 25, 3), (4, 99, 3)])
def test_canary_replicas(total: int, weight: int, expected: int) -> None:
    assert ro.canary_replicas(total, weight) == expected


def test_rolling_moves_stable_and_failed_revisions_are_not_retried() -> None:
    plan = ro.plan_tracks(spec(), {"stable": OLD.to_status()}, NEW, 4)
    assert plan.stable == NEW and plan.mode == "rolling"
    plan = ro.plan_tracks(spec(), {"stable": OLD.to_status(), "failedRevisions": ["bbb"]}, NEW, 4)
    assert plan.stable == OLD and plan.mode == "steady"


BASE: dict[str, Any] = dict(started=100.0, now=150.0, duration=120.0, error_ratio=0.0, max_error_ratio=0.01,
            latency=10.0, baseline_latency=10.0, max_latency_ratio=1.5, crashing=None)


@pytest.mark.parametrize(
    ("changes", "outcome", "metric"),
    [
        ({}, "wait", None),
        ({"now": 221.0}, "pass", None),
        ({"error_ratio": 0.2}, "fail", "errorRatio"),
        ({"latency": 16.0}, "fail", "latencyRatio"),
        ({"crashing": "CrashLoopBackOff: x"}, "fail", "pods"),
        ({"started": None}, "wait", None),
        ({"error_ratio": None, "latency": None, "now": 300.0}, "pass", None),
    ],
)
def test_analyze(changes, outcome, metric) -> None:
    verdict = ro.analyze(**{**BASE, **changes})
    assert verdict.outcome == outcome and verdict.metric == metric


def test_failure_reason_names_metric_and_value() -> None:
    verdict = ro.analyze(**{**BASE, "error_ratio": 0.5})
    assert "error ratio 0.500 > 0.01" in verdict.reason and verdict.value == 0.5


def test_a_pass_without_requests_says_there_was_no_evidence() -> None:
    quiet = ro.analyze(**{**BASE, "error_ratio": None, "latency": None, "now": 300.0})
    assert quiet.outcome == "pass" and "no requests reached it" in quiet.reason
    busy = ro.analyze(**{**BASE, "error_ratio": 0.001, "latency": None, "now": 300.0})
    assert busy.outcome == "pass" and "error ratio 0.001" in busy.reason

"""The replica policy on its own: ratios, tolerance, stabilization, rate limits, bounds, missing data."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as hs

from model_operator.api.types import Autoscaling
from model_operator.scaling.policy import Recommendation, ScaleEvent, compact, decide


def spec(**kw) -> Autoscaling:
    base = {"minReplicas": 1, "maxReplicas": 10, "metrics": [{"type": "queueTime", "target": 5}]}
    base.update(kw)
    return Autoscaling.model_validate(base)


def run(current, values, s=None, now=1000.0, recs=(), events=()):
    return decide(current=current, values=values, spec=s or spec(), now=now, recommendations=list(recs), events=list(events))


def test_scale_up_proportionally_to_the_ratio() -> None:
    d, _ = run(2, {"queueTime": 10.0})
    assert d.desired == 4 and "scale up 2->4" in d.reason and "queueTime=10" in d.reason


def test_inside_tolerance_holds() -> None:
    d, _ = run(3, {"queueTime": 5.4})
    assert d.desired == 3 and d.reason.startswith("steady")


def test_largest_proposal_across_metrics_wins() -> None:
    s = spec(metrics=[{"type": "queueTime", "target": 5}, {"type": "inferenceRate", "target": 100}])
    d, _ = run(2, {"queueTime": 5.0, "inferenceRate": 300.0}, s)
    assert d.desired == 6


def test_a_scale_up_counts_only_ready_replicas() -> None:
    # 2 replicas, the second still starting: the per-replica rate (15.8) is the Ready one's
    # alone. Counting both would want 4 for load that 2 already answer.
    s = spec(metrics=[{"type": "inferenceRate", "target": 10}])
    assert decide(current=2, values={"inferenceRate": 15.8}, spec=s, now=1000.0, recommendations=[], events=[],
                  ready=1)[0].desired == 2
    assert run(2, {"inferenceRate": 15.8}, s)[0].desired == 4
    # More load than the Ready ones plus the starting ones carry still scales up, from the Ready ones.
    assert decide(current=2, values={"inferenceRate": 25.0}, spec=s, now=1000.0, recommendations=[], events=[],
                  ready=1)[0].desired == 3


def test_starting_replicas_never_turn_load_above_target_into_a_scale_down() -> None:
    s = spec(metrics=[{"type": "inferenceRate", "target": 10}], scaleDown={"stabilizationSeconds": 0})
    d, _ = decide(current=4, values={"inferenceRate": 15.0}, spec=s, now=1000.0, recommendations=[], events=[], ready=1)
    assert d.desired == 4 and d.recommendation == 4
    # Below target the starting ones count as running (no scale-down below what the load wants).
    d, _ = decide(current=4, values={"inferenceRate": 5.0}, spec=s, now=1000.0, recommendations=[], events=[], ready=1)
    assert d.desired == 2


def test_scale_down_waits_for_the_stabilization_window() -> None:
    s = spec(scaleDown={"stabilizationSeconds": 300})
    # High recommendation 100 s ago keeps replicas up despite low load now.
    d, hist = run(4, {"queueTime": 0.5}, s, now=1000, recs=[Recommendation(900, 4)])
    assert d.desired == 4 and "stabilization" in d.reason
    # After the window only low recommendations remain.
    d, _ = run(4, {"queueTime": 0.5}, s, now=1301, recs=hist)
    assert d.desired < 4


def test_scale_up_rate_limit_per_period() -> None:
    s = spec(maxReplicas=100, scaleUp={"stabilizationSeconds": 0, "maxPercent": 100, "maxPods": 2, "periodSeconds": 60})
    d, _ = run(2, {"queueTime": 100.0}, s)
    assert d.desired == 4  # max(2*2, 2+2)
    # A scale event 10 s ago from 1 replica counts against the same period.
    d, _ = run(4, {"queueTime": 100.0}, s, events=[ScaleEvent(990, 1, 4)])
    assert d.desired == 4


def test_scale_down_rate_limit() -> None:
    s = spec(minReplicas=1, scaleDown={"stabilizationSeconds": 0, "maxPercent": 10, "maxPods": 1, "periodSeconds": 60})
    d, _ = run(10, {"queueTime": 0.1}, s)
    assert d.desired == 9


def test_bounds() -> None:
    assert run(8, {"queueTime": 500.0})[0].desired == 10
    s = spec(minReplicas=2, scaleDown={"stabilizationSeconds": 0})
    assert run(3, {"queueTime": 0.0}, s)[0].desired == 2


def test_no_data_holds_and_says_so() -> None:
    d, hist = run(5, {"queueTime": None})
    assert d.desired == 5 and d.held and "no metric data" in d.reason
    # The held count joins the window: a scale-down waits out the stabilization window after a
    # blind spell, and a steady blind window keeps its one entry instead of ageing to nothing.
    assert hist == [Recommendation(1000.0, 5)]
    d, hist = run(5, {"queueTime": None}, now=2000.0, recs=hist)
    assert hist == [Recommendation(2000.0, 5)]


def test_partial_data_never_scales_down() -> None:
    s = spec(metrics=[{"type": "queueTime", "target": 5}, {"type": "gpuUtilization", "target": 70}], scaleDown={"stabilizationSeconds": 0})
    d, _ = run(4, {"queueTime": 0.1, "gpuUtilization": None}, s)
    assert d.desired == 4 and "no data for gpuUtilization" in d.reason
    d, _ = run(4, {"queueTime": 20.0, "gpuUtilization": None}, s)
    assert d.desired > 4


def test_oscillating_load_does_not_flap() -> None:
    s = spec(scaleDown={"stabilizationSeconds": 300})
    recs: list[Any] = []
    current, changes = 2, 0
    for i in range(60):  # 10 minutes at 10 s, offered load alternating high/low every 30 s
        load = 18.0 if (i // 3) % 2 == 0 else 2.0
        value = load / max(current, 1)  # queue time falls as replicas share the load
        d, recs = decide(current=current, values={"queueTime": value}, spec=s, now=1000 + 10 * i, recommendations=recs, events=[])
        if d.desired != current:
            changes += 1
            current = d.desired
    assert changes <= 2, f"replicas changed {changes} times"


@settings(max_examples=300, deadline=None)
@given(
    current=hs.integers(0, 50),
    lo=hs.integers(0, 20),
    span=hs.integers(0, 30),
    value=hs.one_of(hs.none(), hs.floats(0, 1e6, allow_nan=False), hs.just(float("nan")), hs.just(float("inf"))),
    target=hs.floats(0.001, 1e4),
    tolerance=hs.floats(0, 1),
)
def test_never_outside_bounds(current, lo, span, value, target, tolerance) -> None:
    hi = max(lo, 1) + span
    s = spec(minReplicas=lo, maxReplicas=hi, tolerance=tolerance, metrics=[{"type": "queueTime", "target": target}])
    d, _ = run(current, {"queueTime": value}, s)
    assert lo <= d.desired <= hi


def test_a_steady_recommendation_keeps_one_entry() -> None:
    s = spec(scaleDown={"stabilizationSeconds": 300})
    recs: list[Any] = []
    for i in range(200):  # 1,000 s of polls every 5 s at the target
        _, recs = decide(current=3, values={"queueTime": 5.0}, spec=s, now=1000 + 5 * i, recommendations=recs, events=[])
    assert recs == [Recommendation(1000 + 5 * 199, 3)]


def test_compaction_keeps_what_the_windows_need() -> None:
    recs = [Recommendation(t, r) for t, r in [(0, 2), (10, 5), (20, 3), (30, 4), (40, 1), (50, 3)]]
    # Down window 100 s: 5 (highest), then 4, then 3 (newest); up window 15 s: 1, then 3.
    kept = compact(recs, 50, up_seconds=15, down_seconds=100)
    assert [(r.time, r.replicas) for r in kept] == [(10, 5), (30, 4), (40, 1), (50, 3)]
    # Everything older than both windows goes.
    assert compact(recs, 200, up_seconds=15, down_seconds=100) == []


@settings(max_examples=200, deadline=None)
@given(
    steps=hs.lists(hs.tuples(hs.integers(1, 30), hs.one_of(hs.none(), hs.floats(0, 60))), min_size=1, max_size=80),
    up=hs.integers(0, 120),
    down=hs.integers(0, 400),
    max_replicas=hs.integers(1, 12),
)
def test_compacted_window_decides_like_the_full_one(steps: list[tuple[int, float | None]], up: int, down: int, max_replicas: int) -> None:
    """The same load fed twice: once carrying the compacted window from call to call, once carrying
    every recommendation ever made. The decisions must be the same at every step."""
    s = spec(maxReplicas=max_replicas, scaleUp={"stabilizationSeconds": up}, scaleDown={"stabilizationSeconds": down})
    compacted: list[Recommendation] = []
    everything: list[Recommendation] = []
    current_a = current_b = 2
    now = 1000.0
    distinct = set()
    for gap, value in steps:
        now += gap
        a, compacted = decide(current=current_a, values={"queueTime": value}, spec=s, now=now, recommendations=compacted, events=[])
        b, _ = decide(current=current_b, values={"queueTime": value}, spec=s, now=now, recommendations=list(everything), events=[])
        assert a.desired == b.desired
        made = b.desired if b.held else b.recommendation  # a blind poll recommends the count it holds
        if made is not None:
            everything.append(Recommendation(now, made))
            distinct.add(made)
        current_a, current_b = a.desired, b.desired
        assert len(compacted) <= 2 * len(distinct)
        # The windows' extremes, computed here from every recommendation, are in the kept ones.
        for seconds, pick in ((up, min), (down, max)):
            full = [r.replicas for r in everything if now - r.time <= seconds]
            kept = [r.replicas for r in compacted if now - r.time <= seconds]
            assert (pick(full) if full else None) == (pick(kept) if kept else None)

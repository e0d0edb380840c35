"""The replica decision, the HPA way, as one pure function.

For each metric: ratio = value / target; inside the tolerance it proposes no change, else
ceil(current * ratio), where a scale-up counts only the Ready replicas (as the HPA does): one
still starting serves nothing and is not yet in the metric's per-replica average, so counting
it would scale up again on load an earlier step already answered. The largest proposal wins. Stabilization windows then take the lowest
recommendation seen during the scale-up window and the highest seen during the scale-down
window (so a brief dip never scales down), rate policies cap the change per period, and
min/max bound the result. Missing data never causes a scale-down.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..api.types import Autoscaling, ScalingRules


@dataclass(frozen=True)
class Recommendation:
    time: float
    replicas: int


@dataclass(frozen=True)
class ScaleEvent:
    time: float
    from_replicas: int
    to_replicas: int


@dataclass
class Decision:
    desired: int
    reason: str
    recommendation: int | None
    metrics: dict[str, float] = field(default_factory=dict)
    held: bool = False


def _proposal(current: int, value: float, target: float, tolerance: float, ready: int | None = None) -> int:
    ratio = value / target
    if abs(ratio - 1.0) <= tolerance:
        return current
    if ratio > 1.0 and ready is not None and ready < current:
        # Above target never proposes fewer than are running; the starting ones count once Ready.
        return max(current, math.ceil(max(ready, 1) * ratio))
    # A deployment at zero has no per-replica load to scale; any load means one replica.
    base = max(current, 1)
    return max(math.ceil(base * ratio), 0 if value == 0 else 1)


def _base_at(now: float, period: float, current: int, events: list[ScaleEvent]) -> int:
    """Replicas at the start of the current rate period: what the policy's change is measured from."""
    in_period = [e for e in events if now - e.time < period]
    return min(in_period, key=lambda e: e.time).from_replicas if in_period else current


def _up_limit(base: int, rules: ScalingRules) -> int:
    by_percent = math.ceil(base * (1 + rules.max_percent / 100.0))
    return max(by_percent, base + rules.max_pods)


def _down_limit(base: int, rules: ScalingRules) -> int:
    by_percent = math.floor(base * (1 - rules.max_percent / 100.0))
    return max(0, min(by_percent, base - rules.max_pods))


def compact(history: list[Recommendation], now: float, up_seconds: float, down_seconds: float) -> list[Recommendation]:
    """The recommendations that can still decide a stabilization window, oldest first.

    The scale-up window takes the lowest recommendation of the last `up_seconds`, the scale-down
    window the highest of the last `down_seconds`. A recommendation followed by a later one at
    least as high can never again be the highest one in the down window (the later one lasts
    longer), nor one followed by a later one at most as low the lowest in the up window. What
    is left is a strictly falling run (for the down window) and a strictly rising one (for the
    up window): at most twice the number of distinct replica counts, whatever the poll rate and
    window length, and a single entry while the recommendation holds steady. The windows'
    minimum and maximum are the same over the kept entries as over all of them."""
    ordered = sorted((r for r in history if now - r.time <= max(up_seconds, down_seconds)), key=lambda r: r.time)
    keep: list[Recommendation] = []
    highest_after: int | None = None
    lowest_after: int | None = None
    for r in reversed(ordered):
        for_down = now - r.time <= down_seconds and (highest_after is None or r.replicas > highest_after)
        for_up = now - r.time <= up_seconds and (lowest_after is None or r.replicas < lowest_after)
        if for_down or for_up:
            keep.append(r)
        highest_after = r.replicas if highest_after is None else max(highest_after, r.replicas)
        lowest_after = r.replicas if lowest_after is None else min(lowest_after, r.replicas)
    return keep[::-1]


def decide(
    *,
    current: int,
    values: dict[str, float | None],
    spec: Autoscaling,
    now: float,
    recommendations: list[Recommendation],
    events: list[ScaleEvent],
    ready: int | None = None,
) -> tuple[Decision, list[Recommendation]]:
    """Return the decision and the recommendation history to keep for the next call. `ready`:
    the Ready replicas (None: unknown, every one of `current` counts)."""
    targets = {m.type.value: m.target for m in spec.metrics}
    present = {k: v for k, v in values.items() if v is not None and math.isfinite(v)}
    missing = sorted(k for k in targets if k not in present)
    if not present:
        why = "no metric data" + (f" ({', '.join(missing)})" if missing else "")
        held = min(max(current, spec.min_replicas), spec.max_replicas)
        # The held count is this poll's recommendation (as the replicas running at a restart are,
        # State.from_status): a blind spell then neither empties the window as it ages (which
        # looked like a change and cost a status write per object) nor lets a scale-down follow
        # the moment metrics return.
        kept = compact([*recommendations, Recommendation(now, held)], now,
                       spec.scale_up.stabilization_seconds, spec.scale_down.stabilization_seconds)
        return Decision(held, f"holding {held} replicas: {why}", None, {}, held=True), kept

    proposals = {k: _proposal(current, present[k], targets[k], spec.tolerance, ready) for k in present if k in targets}
    metric, raw = max(proposals.items(), key=lambda kv: kv[1])
    if missing and raw < current:
        # Some metric is blind: it might be the one holding replicas up.
        raw = current
    # Above maxReplicas every recommendation ends the same way (clamped); storing it clamped
    # bounds the values the window can hold, and so its size (see compact()).
    raw = min(raw, spec.max_replicas)
    history = compact([*recommendations, Recommendation(now, raw)], now,
                      spec.scale_up.stabilization_seconds, spec.scale_down.stabilization_seconds)

    # As in the HPA controller: this poll's recommendation always counts, an earlier one only
    # while it is younger than the window. So a 0-s scale-up window acts on the first poll after
    # a restart, whose running replicas were recorded as a recommendation made at this instant.
    up_window = [raw, *(r.replicas for r in recommendations if now - r.time < spec.scale_up.stabilization_seconds)]
    down_window = [raw, *(r.replicas for r in recommendations if now - r.time < spec.scale_down.stabilization_seconds)]
    up_rec, down_rec = min(up_window), max(down_window)
    desired = current
    if desired < up_rec:
        desired = up_rec
    if desired > down_rec:
        desired = down_rec

    if desired > current:
        limit = _up_limit(_base_at(now, spec.scale_up.period_seconds, current, events), spec.scale_up)
        desired = max(current, min(desired, limit))
    elif desired < current:
        limit = _down_limit(_base_at(now, spec.scale_down.period_seconds, current, events), spec.scale_down)
        desired = min(current, max(desired, limit))
    desired = min(max(desired, spec.min_replicas), spec.max_replicas)

    shown = ", ".join(f"{k}={present[k]:.3g} (target {targets[k]:g})" for k in sorted(present) if k in targets)
    if desired > current:
        reason = f"scale up {current}->{desired}: {metric}={present[metric]:.3g} > target {targets[metric]:g}"
    elif desired < current:
        reason = f"scale down {current}->{desired}: {shown}"
    elif raw < current and desired == current:
        reason = f"holding {current}: scale-down stabilization ({spec.scale_down.stabilization_seconds}s); {shown}"
    else:
        reason = f"steady at {current}: {shown}"
    if missing:
        reason += f"; no data for {', '.join(missing)}"
    return Decision(desired, reason, raw, present), history

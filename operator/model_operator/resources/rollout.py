"""Rollout decisions as pure functions: which artifact each track serves with how many
replicas, and whether an analysis window passed, failed or needs more time.

State lives in status.rollout: `stable` (the artifact serving everyone, the last good one),
`canary` (the artifact under analysis, with when its analysis started) and `failedRevisions`
(artifacts that were rolled back and must not be retried until the spec changes them)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ..api.types import ModelDeploymentSpec, RolloutStrategy


@dataclass(frozen=True)
class Track:
    uri: str
    sha256: str
    revision: str

    @classmethod
    def from_status(cls, data: dict[str, Any] | None) -> Track | None:
        if not data or not data.get("sha256"):
            return None
        return cls(uri=data["uri"], sha256=data["sha256"], revision=data.get("revision") or data.get("specHash") or "")

    def to_status(self) -> dict[str, str]:
        return {"uri": self.uri, "sha256": self.sha256, "revision": self.revision}


@dataclass(frozen=True)
class TrackPlan:
    stable: Track
    stable_replicas: int
    canary: Track | None
    canary_replicas: int
    # "steady": one artifact everywhere; "rolling": stable moves to a new artifact and is
    # watched for analysisSeconds after it completes; "canary": a canary track is analysed.
    mode: str


def canary_replicas(total: int, weight: int) -> int:
    """The canary's share of the replicas; at least one, and never all of them when there are two or more."""
    if total <= 1:
        return 1
    return min(total - 1, max(1, math.ceil(total * weight / 100)))


def plan_tracks(spec: ModelDeploymentSpec, rollout: dict[str, Any], newest: Track, total: int) -> TrackPlan:
    stable = Track.from_status(rollout.get("stable"))
    failed = set(rollout.get("failedRevisions") or [])
    if stable is None:
        return TrackPlan(newest, total, None, 0, "steady")
    if newest.sha256 == stable.sha256 or newest.revision in failed:
        return TrackPlan(stable, total, None, 0, "steady")
    if spec.rollout.strategy == RolloutStrategy.canary:
        n = canary_replicas(total, spec.rollout.canary.weight)
        stable_n = max(total - n, 1) if total > 1 else total
        return TrackPlan(stable, stable_n, newest, n, "canary")
    return TrackPlan(newest, total, None, 0, "rolling")


NO_TRAFFIC = "NoCanaryTraffic"


@dataclass(frozen=True)
class Verdict:
    outcome: str  # "pass", "fail" or "wait"
    reason: str
    metric: str | None = None
    value: float | None = None


def analyze(
    *,
    started: float | None,
    now: float,
    duration: float,
    error_ratio: float | None,
    max_error_ratio: float,
    latency: float | None,
    baseline_latency: float | None,
    max_latency_ratio: float | None,
    crashing: str | None,
    requests: float | None = None,
    min_requests: int = 0,
) -> Verdict:
    """Judge a track under analysis. A crash-looping or unloadable model fails at once;
    thresholds fail as soon as they're breached; passing needs the whole window."""
    if crashing:
        return Verdict("fail", crashing, "pods", None)
    if started is None:
        return Verdict("wait", "waiting for the new pods to become ready")
    if error_ratio is not None and error_ratio > max_error_ratio:
        return Verdict("fail", f"error ratio {error_ratio:.3f} > {max_error_ratio:g}", "errorRatio", error_ratio)
    if max_latency_ratio and latency is not None and baseline_latency:
        ratio = latency / baseline_latency
        if ratio > max_latency_ratio:
            return Verdict("fail", f"p99 latency {latency:.2f} ms is {ratio:.2f}x the stable {baseline_latency:.2f} ms (max {max_latency_ratio:g}x)",
                           "latencyRatio", ratio)
    if now - started < duration:
        return Verdict("wait", f"analysing: {now - started:.0f}/{duration:.0f}s")
    if min_requests and (requests or 0) < min_requests:
        return Verdict("wait", f"{requests or 0:.0f} requests reached it in {now - started:.0f}s of analysis, fewer than "
                               f"rollout.canary.minRequests {min_requests}: not promoted", NO_TRAFFIC)
    evidence = f"error ratio {error_ratio:.3f}" if error_ratio is not None else "no requests reached it, so no error ratio to judge"
    return Verdict("pass", f"passed {duration:.0f}s analysis ({evidence})")

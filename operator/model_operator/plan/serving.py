"""The serving part of the plan: one Deployment per track (stable, and a canary while one is
analysed), the Service, the PodDisruptionBudget, and the analysis that promotes or rolls back."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..api.types import ModelDeploymentSpec, Serving
from ..config import OperatorConfig
from ..kube.api import DESIRED_HASH
from ..resources import common as names
from ..resources import rollout as ro
from ..resources import serving as serving_builder
from . import status as st
from .core import Draft

FATAL = {"CrashLoopBackOff", "ArtifactRejected", "ProgressDeadlineExceeded", "OOMKilled", "ImagePullBackOff", "ErrImagePull"}


@dataclass
class TrackView:
    ready: int = 0
    complete: bool = False
    problems: list[st.Problem] = field(default_factory=list)


@dataclass
class ServeResult:
    desired: int = 0
    ready: int = 0
    complete: bool = False
    rollout: dict[str, Any] = field(default_factory=dict)
    rolled_back: tuple[str, str] | None = None
    held: str | None = None  # why an analysed canary is neither promoted nor rolled back


def track_view(desired: dict[str, Any], observed: dict[str, Any] | None, replicas: int) -> TrackView:
    observed = observed or {}
    dstatus = observed.get("status") or {}
    ready = int(dstatus.get("readyReplicas") or 0)
    complete = (
        bool(observed)
        and observed.get("desiredHash") == desired["metadata"]["annotations"][DESIRED_HASH]
        and observed.get("generation") == dstatus.get("observedGeneration")
        and int(dstatus.get("updatedReplicas") or 0) == replicas
        and int(dstatus.get("replicas") or 0) == replicas
        and ready == replicas
    )
    problems = [
        st.Problem("ProgressDeadlineExceeded", c.get("message", ""))
        for c in dstatus.get("conditions") or []
        if c.get("type") == "Progressing" and c.get("reason") == "ProgressDeadlineExceeded"
    ]
    return TrackView(ready=ready, complete=complete, problems=problems)


def pod_problems(pods: list[dict[str, Any]]) -> dict[str, list[st.Problem]]:
    """Problems of Triton pods, grouped by the artifact revision they serve."""
    out: dict[str, list[st.Problem]] = {}
    for pod in pods:
        labels = pod.get("labels", {})
        if labels.get(names.LABEL_COMPONENT) != "triton" or pod.get("deleting"):
            continue
        rev = labels.get(names.LABEL_REVISION, "")
        out.setdefault(rev, []).extend(st.Problem(p["reason"], f"pod {pod['name']}: {p['message']}") for p in pod["problems"])
    return out


def _track(d: Draft, spec: ModelDeploymentSpec, config: OperatorConfig, track: ro.Track, which: str, replicas: int) -> TrackView:
    ref = serving_builder.ArtifactRef(uri=track.uri, sha256=track.sha256, revision=track.revision)
    dep = serving_builder.build_deployment(d.name, d.namespace, spec, config, ref, track=which, replicas=replicas)
    d.want_existing(dep)
    d.grant(config.artifact_store, "get", track.uri)
    return track_view(dep, d.mine("Deployment", dep["metadata"]["name"]), replicas)


def _fixtures(d: Draft, spec: ModelDeploymentSpec, total: int) -> None:
    """The Service and the PodDisruptionBudget (only while there is more than one replica)."""
    d.want_existing(serving_builder.build_service(d.name, d.namespace, openai=serving_builder.is_generation(spec),
                                                    probe=serving_builder.probes_quality(spec)))
    pdb = serving_builder.build_pdb(d.name, d.namespace, total)
    if pdb is not None:
        d.want_existing(pdb)
    else:
        d.drop_if_present([("policy/v1", "PodDisruptionBudget")], names.truncate(d.name, "-triton"))


def plan_serving(d: Draft, spec: ModelDeploymentSpec, config: OperatorConfig, artifact: dict[str, Any]) -> ServeResult:
    total = (spec.serving or Serving()).replicas
    rollout = dict(d.old_status.get("rollout") or {})
    newest = ro.Track(uri=artifact["uri"], sha256=artifact["sha256"], revision=artifact["specHash"])
    tracks = ro.plan_tracks(spec, rollout, newest, total)
    result = ServeResult(desired=total)
    stable = _track(d, spec, config, tracks.stable, "stable", tracks.stable_replicas)
    canary = None
    if tracks.canary is not None:
        canary = _track(d, spec, config, tracks.canary, "canary", tracks.canary_replicas)
    else:
        d.drop_if_present([("apps/v1", "Deployment")], names.deployment_name(d.name, "canary"))
    _fixtures(d, spec, total)
    views = [v for v in (stable, canary) if v is not None]
    result.ready = sum(v.ready for v in views)
    result.complete = all(v.complete for v in views)
    by_revision = pod_problems(d.observed.pods)
    d.problems += [p for probs in by_revision.values() for p in probs] + [p for v in views for p in v.problems]
    result.rollout = analyse(d, spec, tracks, rollout, stable, canary, by_revision, result)
    return result


def _subject(tracks: ro.TrackPlan, stable: TrackView, canary: TrackView | None) -> tuple[ro.Track, TrackView, str, str]:
    """The track under analysis: (artifact, its view, status key, pod track label)."""
    if tracks.mode == "canary":
        assert tracks.canary is not None and canary is not None
        return tracks.canary, canary, "canary", "canary"
    return tracks.stable, stable, "watch", "stable"


def _readings(d: Draft, tracks: ro.TrackPlan, track: str) -> tuple[float | None, float | None, float | None, float | None]:
    """(error ratio, p99 latency, baseline p99 latency, requests) from the readings the controller took."""
    subject = d.observed.metrics.get(track)
    if subject is None:
        return None, None, None, None
    # Without requests an error ratio of 0 is no evidence: report it as no data.
    error_ratio = subject.error_ratio if subject.request_rate else None
    if tracks.mode != "canary":
        return error_ratio, None, None, None
    baseline = d.observed.metrics.get("stable")
    return error_ratio, subject.latency_ms, baseline.latency_ms if baseline else None, subject.requests


def analyse(
    d: Draft, spec: ModelDeploymentSpec, tracks: ro.TrackPlan, rollout: dict[str, Any], stable: TrackView,
    canary: TrackView | None, by_revision: dict[str, list[st.Problem]], result: ServeResult,
) -> dict[str, Any]:
    rollout = dict(rollout)
    if rollout.get("stable") is None or tracks.mode == "steady":
        if rollout.get("stable") is None:
            rollout["stable"] = tracks.stable.to_status()
        rollout.pop("canary", None)
        rollout.pop("watch", None)
        rollout["analysis"] = None
        return rollout
    subject, view, key, track = _subject(tracks, stable, canary)
    state = dict(rollout.get(key) or {})
    if state.get("sha256") != subject.sha256:
        state = {**subject.to_status(), "started": None}
    if state.get("started") is None and view.complete:
        state["started"] = d.now
    bad = [p for p in by_revision.get(subject.revision, []) + view.problems if p.reason in FATAL]
    crashing = f"{bad[0].reason}: {bad[0].message}" if bad else None
    taken = crashing is None and state.get("started") is not None
    error_ratio, latency, baseline, requests = _readings(d, tracks, track) if taken else (None, None, None, None)
    canary_spec, is_canary = spec.rollout.canary, tracks.mode == "canary"
    verdict = ro.analyze(
        started=state.get("started"), now=d.now, duration=canary_spec.analysis_seconds, error_ratio=error_ratio,
        max_error_ratio=canary_spec.max_error_ratio if is_canary else spec.monitoring.max_error_ratio,
        latency=latency, baseline_latency=baseline,
        max_latency_ratio=canary_spec.max_latency_ratio if is_canary else None, crashing=crashing,
        requests=requests, min_requests=canary_spec.min_requests if is_canary else 0,
    )
    rollout["analysis"] = f"{key} {subject.revision}: {verdict.reason}"
    return _decide(d, spec, rollout, state, subject, key, verdict, result)


def _decide(
    d: Draft, spec: ModelDeploymentSpec, rollout: dict[str, Any], state: dict[str, Any], subject: ro.Track, key: str,
    verdict: ro.Verdict, result: ServeResult,
) -> dict[str, Any]:
    if verdict.outcome == "wait":
        rollout[key] = state
        if verdict.metric == ro.NO_TRAFFIC:
            result.held = f"{key} {subject.revision}: {verdict.reason}"
    elif verdict.outcome == "pass":
        rollout["stable"] = subject.to_status()
        rollout.pop(key, None)
        d.event("Normal", "Promoted", f"artifact {subject.revision} promoted after {key} analysis: {verdict.reason}")
    elif spec.rollout.auto_rollback:
        rollout["failedRevisions"] = [*(rollout.get("failedRevisions") or []), subject.revision][-50:]
        rollout.pop(key, None)
        previous = (rollout.get("stable") or {}).get("revision")
        message = f"rolled back {subject.revision} to {previous}: {verdict.reason}"
        result.rolled_back = (verdict.metric or "pods", message)
        d.event("Warning", "RolledBack", message)
    else:
        rollout[key] = state
        d.problems.append(st.Problem("AnalysisFailed", f"{key} {subject.revision}: {verdict.reason} (autoRollback is off)"))
    return rollout

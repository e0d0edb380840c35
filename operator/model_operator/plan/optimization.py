"""The optimization part of the plan: the worker Job for the current spec, and what its
outcome means for status.artifact, status.optimization and OptimizationSucceeded."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..api.types import ModelDeploymentSpec
from ..config import OperatorConfig
from ..optimize.progress import summary as progress_summary
from ..resources import common as names
from ..resources import job as job_builder
from . import status as st
from .core import Draft


@dataclass
class OptimizationState:
    artifact: dict[str, Any] = field(default_factory=dict)
    optimization: dict[str, Any] = field(default_factory=dict)
    have_current: bool = False
    optimizing: bool = False
    failed: bool = False

    @property
    def artifact_ready(self) -> bool:
        return bool(self.artifact.get("sha256"))


def worker_summary(job_pods: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The worker's summary from the Job's pods. A Job that succeeded after a retry has a
    failed pod too: the successful attempt's summary wins over any failed one."""
    found: list[dict[str, Any]] = []
    for pod in job_pods:
        messages = list(pod.get("terminationMessages", [])) + [p.get("message", "") for p in pod.get("problems", [])]
        found += [s for s in map(st.parse_summary, messages) if s is not None]
    return next((s for s in found if s.get("ok")), found[0] if found else None)


def plan_optimization(d: Draft, spec: ModelDeploymentSpec, digest: str, config: OperatorConfig) -> OptimizationState:
    state = OptimizationState(
        artifact=dict(d.old_status.get("artifact") or {}), optimization=dict(d.old_status.get("optimization") or {})
    )
    state.have_current = state.artifact.get("specHash") == digest and bool(state.artifact.get("sha256"))
    if not state.have_current:
        _follow_job(d, spec, digest, config, state)
    _artifact_condition(d, state)
    return state


def _follow_job(d: Draft, spec: ModelDeploymentSpec, digest: str, config: OperatorConfig, state: OptimizationState) -> None:
    job_name = names.job_name(d.name, digest)
    job = d.observed.job(job_name)
    if job is not None and not d.owns(job):
        d.conflict("Job", job_name, job)
        return
    failed_before = state.optimization.get("job") == job_name and d.old_condition("OptimizationSucceeded").get("reason") in FAILED
    if job is None and failed_before:
        state.failed = True
    elif job is None:
        d.want(job_builder.build_worker_job(d.name, d.namespace, spec, config), counter="jobs_started")
        d.grant(config.artifact_store, "put", config.artifact_store.uri_for(d.namespace, d.name, digest))
        state.optimization, state.optimizing = {"job": job_name}, True
        d.cond("OptimizationSucceeded", "Unknown", "JobStarted", f"optimization Job {job_name} started for spec {digest}")
    elif job.get("succeeded"):
        _job_succeeded(d, job_name, digest, state)
    elif job.get("finishedFailed"):
        _job_failed(d, job, job_name, state)
    else:
        # Only while the worker runs may it write its (one) artifact.
        d.grant(config.artifact_store, "put", config.artifact_store.uri_for(d.namespace, d.name, digest))
        _job_running(d, job_name, state)


def _job_succeeded(d: Draft, job_name: str, digest: str, state: OptimizationState) -> None:
    summary = worker_summary(d.observed.job_pods(job_name))
    if not (summary and summary.get("ok")):
        state.optimizing = True
        d.cond("OptimizationSucceeded", "Unknown", "ReadingReport", f"Job {job_name} succeeded; waiting for its report summary")
        return
    d.count("jobs_succeeded")
    state.artifact = {**summary.get("artifact", {}), "specHash": digest}
    state.artifact["size"] = st.human_size(state.artifact.get("sizeBytes"))
    state.optimization = {**summary.get("optimization", {}), "job": job_name}
    state.have_current = True
    recipe = state.optimization.get("recipe") or "as-is"
    d.cond("OptimizationSucceeded", True, "JobSucceeded", f"Job {job_name} produced {state.artifact.get('uri')} (recipe {recipe})")


# The worker's exit code (docs/contracts.md) -> the OptimizationSucceeded reason.
FAILURE_REASONS = {2: "InvalidInput", 3: "QualityGateRejected"}
FAILED = {"WorkerFailed", *FAILURE_REASONS.values()}


def _job_failed(d: Draft, job: dict[str, Any], job_name: str, state: OptimizationState) -> None:
    pods = d.observed.job_pods(job_name)
    summary = worker_summary(pods) or {}
    message = summary.get("reason") or job.get("failureMessage") or "the worker failed"
    # The summary's exit code; else the pods' (a worker that died before writing one).
    codes = [int(summary["exitCode"])] if summary.get("exitCode") else [c for p in pods for c in p.get("exitCodes") or []]
    reason = next((FAILURE_REASONS[c] for c in codes if c in FAILURE_REASONS), "WorkerFailed")
    state.failed = True
    state.optimization = {"job": job_name}
    if summary.get("candidates"):
        state.optimization["candidates"] = summary["candidates"]
    if d.old_condition("OptimizationSucceeded").get("reason") not in FAILED:
        d.count("jobs_failed")
    d.cond("OptimizationSucceeded", False, reason, f"Job {job_name}: {message}")


def _job_running(d: Draft, job_name: str, state: OptimizationState) -> None:
    state.optimizing = True
    state.optimization = {**state.optimization, "job": job_name}
    progress = d.observed.progress.get(job_name)
    if progress is not None:
        state.optimization["progress"] = {**progress, "summary": progress_summary(progress)}
    problems: list[st.Problem] = []
    for pod in d.observed.job_pods(job_name):
        problems += [st.Problem(p["reason"], f"worker pod {pod['name']}: {p['message']}") for p in pod["problems"]]
    d.problems += problems
    if problems:
        d.cond("OptimizationSucceeded", "Unknown", problems[0].reason, problems[0].message)
    else:
        where = f": {progress_summary(progress)}" if progress is not None else ""
        d.cond("OptimizationSucceeded", "Unknown", "JobRunning", f"optimization Job {job_name} is running{where}")


def _artifact_condition(d: Draft, state: OptimizationState) -> None:
    artifact = state.artifact
    if state.artifact_ready:
        d.cond("ArtifactReady", True, "Verified" if state.have_current else "PreviousArtifact",
               f"{artifact.get('uri')} sha256 {str(artifact.get('sha256'))[:12]}…")
    else:
        d.cond("ArtifactReady", False, "NoArtifact", "no artifact has been produced yet")

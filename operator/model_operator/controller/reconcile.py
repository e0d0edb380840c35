"""One reconcile of a ModelDeployment: observe (from the caches), plan (pure builders), apply
(through kube/), report (status and Events). Level-triggered: it recomputes everything from
what it sees, so running it twice, or after a restart, changes nothing that is already right."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import kopf

from ..api.hashing import spec_hash
from ..api.types import ModelDeploymentSpec, Serving, Target
from ..api.validation import SpecError, load_spec
from ..config import OperatorConfig
from ..kube.api import DESIRED_HASH, Kube, with_desired_hash
from ..resources import common as names
from ..resources import job as job_builder
from ..resources import serving as serving_builder
from ..resources import status as st
from . import metrics

# (namespace, modeldeployment name) -> cached summaries, filled by kopf indexes in handlers.py.
Key = tuple[str, str]


@dataclass
class Observed:
    jobs: list[dict[str, Any]] = field(default_factory=list)
    pods: list[dict[str, Any]] = field(default_factory=list)
    children: list[dict[str, Any]] = field(default_factory=list)


def _values(index: Any, key: Key) -> list[dict[str, Any]]:
    try:
        return list(index.get(key, []))
    except (AttributeError, TypeError):
        return []


def observe(key: Key, jobs_idx: Any, pods_idx: Any, children_idx: Any) -> Observed:
    return Observed(jobs=_values(jobs_idx, key), pods=_values(pods_idx, key), children=_values(children_idx, key))


def check_cluster_uris(spec: ModelDeploymentSpec) -> None:
    """Local paths exist only on the machine of `model-operator local`; in a cluster they would
    read whatever the worker image happens to hold."""
    refs = [("model.uri", spec.model.uri)]
    if spec.data.calibration:
        refs.append(("data.calibration.uri", spec.data.calibration.uri))
    if spec.data.validation:
        refs.append(("data.validation.uri", spec.data.validation.uri))
    for path, uri in refs:
        if not uri.startswith(("s3://", "http://", "https://", "pvc://")):
            raise SpecError(path, f"{uri!r}: in a cluster use s3://, http(s):// or pvc://claim/path (local paths are for `model-operator local`)")
        if uri.startswith("pvc://") and ".." in uri.split("/"):
            raise SpecError(path, f"{uri!r}: '..' is not allowed in pvc:// paths")


@dataclass
class Outcome:
    """What one reconcile decided; the handler turns it into a status patch and Events."""

    status: dict[str, Any]
    events: list[tuple[str, str, str]] = field(default_factory=list)  # (type, reason, message)


def _child(children: Iterable[dict[str, Any]], kind: str, name: str) -> dict[str, Any] | None:
    return next((c for c in children if c.get("kind") == kind and c.get("name") == name), None)


class Reconciler:
    def __init__(self, kube: Kube, config: OperatorConfig, has_service_monitor: bool = False) -> None:
        self.kube = kube
        self.config = config
        self.has_service_monitor = has_service_monitor

    def _ensure(self, owner: dict[str, Any], obj: dict[str, Any], observed: dict[str, Any] | None) -> bool:
        """Apply `obj` unless the cached child already carries its desired hash. True if written."""
        kopf.adopt(obj, owner=owner)
        with_desired_hash(obj)
        if observed is not None and observed.get("desiredHash") == obj["metadata"]["annotations"][DESIRED_HASH]:
            return False
        self.kube.apply(obj)
        metrics.API_WRITES.labels(obj["kind"], "apply").inc()
        return True

    def reconcile(self, body: dict[str, Any], observed: Observed) -> Outcome:
        meta = body["metadata"]
        name, namespace, generation = meta["name"], meta["namespace"], meta.get("generation")
        old_status: dict[str, Any] = dict(body.get("status") or {})
        conditions: list[dict[str, Any]] = list(old_status.get("conditions") or [])
        status: dict[str, Any] = {"observedGeneration": generation}
        events: list[tuple[str, str, str]] = []

        def cond(type_: str, value: bool | str, reason: str, message: str) -> None:
            nonlocal conditions
            value_s = value if isinstance(value, str) else ("True" if value else "False")
            before = st.get_condition(conditions, type_)
            conditions = st.set_condition(conditions, type_, value_s, reason, message, generation)
            if before is None or before.get("status") != value_s or before.get("reason") != reason:
                bad = (type_ == "Degraded" and value_s == "True") or (type_ != "Degraded" and value_s == "False")
                if bad or type_ in ("Available", "OptimizationSucceeded", "ArtifactReady"):
                    events.append(("Warning" if bad else "Normal", reason, message))

        try:
            spec = load_spec(body.get("spec") or {})
            check_cluster_uris(spec)
            if spec.target != Target.device:
                serving_builder.resolve_pool(spec, self.config)
        except (SpecError, serving_builder.PoolError) as exc:
            cond("OptimizationSucceeded", False, "InvalidSpec", str(exc))
            status.update(phase=st.Phase.failed.value, conditions=conditions)
            return Outcome(status=status, events=events)

        digest = spec_hash(spec)
        job_name = names.job_name(name, digest)
        artifact = dict(old_status.get("artifact") or {})
        optimization = dict(old_status.get("optimization") or {})
        have_current = artifact.get("specHash") == digest and bool(artifact.get("sha256"))
        optimizing = optimization_failed = False
        problems: list[st.Problem] = []

        if not have_current:
            job = next((j for j in observed.jobs if j.get("name") == job_name), None)
            job_pods = [p for p in observed.pods if p.get("labels", {}).get("job-name") == job_name]
            failed_before = optimization.get("job") == job_name and (
                (st.get_condition(conditions, "OptimizationSucceeded") or {}).get("reason") == "WorkerFailed"
            )
            if job is None and not failed_before:
                job_obj = job_builder.build_worker_job(name, namespace, spec, self.config)
                self._ensure(body, job_obj, None)
                metrics.JOBS_STARTED.inc()
                optimization = {"job": job_name}
                optimizing = True
                cond("OptimizationSucceeded", "Unknown", "JobStarted", f"optimization Job {job_name} started for spec {digest}")
            elif job is None:
                optimization_failed = True
            elif job.get("succeeded"):
                summary = self._summary(job_pods)
                if summary and summary.get("ok"):
                    metrics.JOBS_SUCCEEDED.inc()
                    artifact = {**summary.get("artifact", {}), "specHash": digest}
                    artifact["size"] = st.human_size(artifact.get("sizeBytes"))
                    optimization = {**summary.get("optimization", {}), "job": job_name}
                    have_current = True
                    recipe = optimization.get("recipe") or "as-is"
                    cond("OptimizationSucceeded", True, "JobSucceeded", f"Job {job_name} produced {artifact.get('uri')} (recipe {recipe})")
                else:
                    optimizing = True
                    cond("OptimizationSucceeded", "Unknown", "ReadingReport", f"Job {job_name} succeeded; waiting for its report summary")
            elif job.get("finishedFailed"):
                summary = self._summary(job_pods)
                reason = (summary or {}).get("reason") or job.get("failureMessage") or "the worker failed"
                optimization_failed = True
                optimization = {"job": job_name}
                if (st.get_condition(conditions, "OptimizationSucceeded") or {}).get("reason") != "WorkerFailed":
                    metrics.JOBS_FAILED.inc()
                cond("OptimizationSucceeded", False, "WorkerFailed", f"Job {job_name}: {reason}")
            else:
                optimizing = True
                optimization = {**optimization, "job": job_name}
                for pod in job_pods:
                    problems += [st.Problem(p["reason"], f"worker pod {pod['name']}: {p['message']}") for p in pod["problems"]]
                if problems:
                    cond("OptimizationSucceeded", "Unknown", problems[0].reason, problems[0].message)
                else:
                    cond("OptimizationSucceeded", "Unknown", "JobRunning", f"optimization Job {job_name} is running")

        artifact_ready = bool(artifact.get("sha256"))
        if artifact_ready:
            cond("ArtifactReady", True, "Verified" if have_current else "PreviousArtifact",
                 f"{artifact.get('uri')} sha256 {str(artifact.get('sha256'))[:12]}…")
        else:
            cond("ArtifactReady", False, "NoArtifact", "no artifact has been produced yet")

        serves = spec.target != Target.device
        ready = desired = 0
        rollout_complete = False
        if serves and artifact_ready:
            ready, desired, rollout_complete, serving_problems = self._serve(body, spec, artifact, observed)
            problems += serving_problems
            status.update(
                replicas=desired,
                readyReplicas=ready,
                ready=f"{ready}/{desired}",
                selector=names.selector_string(names.serving_selector(name)),
                endpoint=serving_builder.endpoint(name, namespace),
            )
            if ready >= max(desired, 1) or (desired == 0):
                cond("Available", True, "MinimumReplicasReady", f"{ready}/{desired} Triton replicas ready")
            else:
                cond("Available", False, "ReplicasNotReady", f"{ready}/{desired} Triton replicas ready")
            if rollout_complete and not optimizing:
                cond("Progressing", False, "RolloutComplete", "serving the current artifact on every replica")
            else:
                cond("Progressing", True, "Rolling" if artifact_ready else "Optimizing", "rollout in progress")
        elif serves:
            status.update(
                replicas=0, readyReplicas=0, ready=f"0/{(spec.serving or Serving()).replicas}",
                selector=names.selector_string(names.serving_selector(name)),
            )
            cond("Available", False, "NoArtifact", "waiting for the optimized artifact")
            cond("Progressing", True, "Optimizing", "optimizing the model")
        else:
            cond("Available", artifact_ready, "Published" if artifact_ready else "NoArtifact",
                 f"artifact at {artifact.get('uri')}" if artifact_ready else "waiting for the optimized artifact")
            if artifact_ready:
                status["endpoint"] = {"http": artifact.get("uri")}

        if problems:
            cond("Degraded", True, problems[0].reason, "; ".join(p.message for p in problems)[:1024])
        else:
            cond("Degraded", False, "Healthy", "no problems observed")

        phase = st.phase_for(
            spec_error=None,
            optimization_failed=optimization_failed,
            optimizing=optimizing,
            artifact_ready=artifact_ready,
            serves=serves,
            ready_replicas=ready,
            desired_replicas=desired,
            rollout_complete=rollout_complete,
            problems=problems,
        )
        status.update(phase=phase.value, conditions=conditions)
        if artifact:
            status["artifact"] = artifact
        if optimization:
            status["optimization"] = optimization
        return Outcome(status=status, events=events)

    @staticmethod
    def _summary(job_pods: list[dict[str, Any]]) -> dict[str, Any] | None:
        for pod in job_pods:
            for message in pod.get("terminationMessages", []):
                summary = st.parse_summary(message)
                if summary is not None:
                    return summary
            for problem in pod.get("problems", []):
                summary = st.parse_summary(problem.get("message", ""))
                if summary is not None:
                    return summary
        return None

    def _serve(
        self, body: dict[str, Any], spec: ModelDeploymentSpec, artifact: dict[str, Any], observed: Observed
    ) -> tuple[int, int, bool, list[st.Problem]]:
        name, namespace = body["metadata"]["name"], body["metadata"]["namespace"]
        serving = spec.serving or Serving()
        replicas = serving.replicas
        ref = serving_builder.ArtifactRef(uri=artifact["uri"], sha256=artifact["sha256"], revision=artifact["specHash"])
        dep = serving_builder.build_deployment(name, namespace, spec, self.config, ref, track="stable", replicas=replicas)
        dep_name = dep["metadata"]["name"]
        self._ensure(body, dep, _child(observed.children, "Deployment", dep_name))
        svc = serving_builder.build_service(name, namespace)
        self._ensure(body, svc, _child(observed.children, "Service", svc["metadata"]["name"]))
        pdb = serving_builder.build_pdb(name, namespace, replicas)
        pdb_name = names.truncate(name, "-triton")
        existing_pdb = _child(observed.children, "PodDisruptionBudget", pdb_name)
        if pdb is not None:
            self._ensure(body, pdb, existing_pdb)
        elif existing_pdb is not None:
            self.kube.delete("policy/v1", "PodDisruptionBudget", pdb_name, namespace)
        if self.has_service_monitor and spec.monitoring.service_monitor:
            sm = serving_builder.build_service_monitor(name, namespace)
            self._ensure(body, sm, _child(observed.children, "ServiceMonitor", sm["metadata"]["name"]))

        observed_dep = _child(observed.children, "Deployment", dep_name) or {}
        dstatus = observed_dep.get("status") or {}
        ready = int(dstatus.get("readyReplicas") or 0)
        updated = int(dstatus.get("updatedReplicas") or 0)
        total = int(dstatus.get("replicas") or 0)
        current_generation = observed_dep.get("generation") == dstatus.get("observedGeneration")
        rollout_complete = (
            bool(observed_dep)
            and observed_dep.get("desiredHash") == dep["metadata"]["annotations"][DESIRED_HASH]
            and current_generation
            and updated == replicas
            and total == replicas
            and ready == replicas
        )
        problems: list[st.Problem] = []
        for pod in observed.pods:
            if pod.get("labels", {}).get(names.LABEL_COMPONENT) != "triton" or pod.get("deleting"):
                continue
            problems += [st.Problem(p["reason"], f"pod {pod['name']}: {p['message']}") for p in pod["problems"]]
        for c in dstatus.get("conditions") or []:
            if c.get("type") == "Progressing" and c.get("reason") == "ProgressDeadlineExceeded":
                problems.append(st.Problem("ProgressDeadlineExceeded", c.get("message", "")))
        return ready, replicas, rollout_complete, problems

"""One reconcile of a ModelDeployment: observe (from the caches), plan (pure builders), apply
(through kube/), report (status and Events). Level-triggered: it recomputes everything from
what it sees, so running it twice, or after a restart, changes nothing that is already right."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import kopf

from ..api.hashing import spec_hash
from ..api.types import ModelDeploymentSpec, ScalingEngine, Serving, Target
from ..api.validation import SpecError, load_spec
from ..config import OperatorConfig
from ..kube.api import DESIRED_HASH, Kube, KindNotServed, with_desired_hash
from ..resources import common as names
from ..resources import job as job_builder
from ..resources import serving as serving_builder
from ..resources import autoscaling as autoscaling_builder
from ..resources import store_jobs
from ..resources import rollout as ro
from ..resources import status as st
from ..scaling import health as health_policy
from ..scaling import promql
from ..scaling.prometheus import Prometheus, PrometheusError
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


# Conditions whose transitions become Events; rollout Events come from the analysis itself.
_EVENTFUL = {"OptimizationSucceeded", "ArtifactReady", "Available", "Degraded", "QualityDegraded"}
_NEGATIVE = {"Degraded", "QualityDegraded", "RolledBack"}
_FATAL = {"CrashLoopBackOff", "ArtifactRejected", "ProgressDeadlineExceeded", "OOMKilled", "ImagePullBackOff", "ErrImagePull"}


@dataclass
class TrackView:
    ready: int = 0
    complete: bool = False
    problems: list[st.Problem] = field(default_factory=list)


def _track_view(dep: tuple[dict[str, Any], dict[str, Any] | None], replicas: int) -> TrackView:
    desired, observed = dep
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


def _pod_problems(pods: list[dict[str, Any]]) -> dict[str, list[st.Problem]]:
    """Problems of Triton pods, grouped by the artifact revision they serve."""
    out: dict[str, list[st.Problem]] = {}
    for pod in pods:
        labels = pod.get("labels", {})
        if labels.get(names.LABEL_COMPONENT) != "triton" or pod.get("deleting"):
            continue
        rev = labels.get(names.LABEL_REVISION, "")
        out.setdefault(rev, []).extend(st.Problem(p["reason"], f"pod {pod['name']}: {p['message']}") for p in pod["problems"])
    return out


@dataclass
class ServeResult:
    desired: int = 0
    ready: int = 0
    complete: bool = False
    problems: list[st.Problem] = field(default_factory=list)
    rollout: dict[str, Any] = field(default_factory=dict)
    events: list[tuple[str, str, str]] = field(default_factory=list)
    rolled_back: tuple[str, str] | None = None
    analysis_note: str | None = None


@dataclass
class Outcome:
    """What one reconcile decided; the handler turns it into a status patch and Events."""

    status: dict[str, Any]
    events: list[tuple[str, str, str]] = field(default_factory=list)  # (type, reason, message)


def _child(children: Iterable[dict[str, Any]], kind: str, name: str) -> dict[str, Any] | None:
    return next((c for c in children if c.get("kind") == kind and c.get("name") == name), None)


KIND_RECHECK_SECONDS = 60.0
SERVICE_MONITOR = ("monitoring.coreos.com/v1", "ServiceMonitor")


class Reconciler:
    def __init__(
        self, kube: Kube, config: OperatorConfig, has_service_monitor: bool = False, prom: Prometheus | None = None
    ) -> None:
        self.kube = kube
        self.prom = prom
        self.config = config
        # Optional kinds (CRDs of other projects): (served, when last asked).
        self._kinds: dict[tuple[str, str], tuple[bool, float]] = {
            SERVICE_MONITOR: (has_service_monitor, time.time()),
        }
        self._kinds_lock = threading.Lock()
        self._health_checked: dict[Key, float] = {}

    def kind_served(self, api: tuple[str, str], now: float) -> bool:
        """Whether the cluster serves an optional kind (KEDA's ScaledObject, the Prometheus
        operator's ServiceMonitor). A miss is asked again after a minute, so installing one needs
        no operator restart; an apply that finds the kind gone marks it missing (_apply_optional)."""
        served, checked = self._kinds.get(api, (False, float("-inf")))
        if served or now - checked < KIND_RECHECK_SECONDS:
            return served
        # One handler thread asks the API server; the others that found the answer stale wait
        # for it instead of each running a full discovery.
        with self._kinds_lock:
            served, checked = self._kinds.get(api, (False, float("-inf")))
            if not served and now - checked >= KIND_RECHECK_SECONDS:
                served = self.kube.has_kind(*api)
                self._kinds[api] = (served, now)
        return served

    def _apply_optional(self, owner: dict[str, Any], obj: dict[str, Any], observed: dict[str, Any] | None, now: float) -> None:
        """Apply a child of an optional kind; its CRD disappearing must not stop the rest of the reconcile."""
        try:
            self._ensure(owner, obj, observed)
        except KindNotServed:
            self._kinds[(obj["apiVersion"], obj["kind"])] = (False, now)

    def _ensure(self, owner: dict[str, Any], obj: dict[str, Any], observed: dict[str, Any] | None) -> bool:
        """Apply `obj` unless the cached child already carries its desired hash. True if written."""
        kopf.adopt(obj, owner=owner)
        with_desired_hash(obj)
        if observed is not None and observed.get("desiredHash") == obj["metadata"]["annotations"][DESIRED_HASH]:
            return False
        self.kube.apply(obj)
        metrics.API_WRITES.labels(obj["kind"], "apply").inc()
        return True

    def reconcile(self, body: dict[str, Any], observed: Observed, now: float | None = None) -> Outcome:
        now = time.time() if now is None else now
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
            if type_ not in _EVENTFUL or (before is not None and before.get("status") == value_s and before.get("reason") == reason):
                return
            bad = value_s == ("True" if type_ in _NEGATIVE else "False")
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
            served = self._serve(body, spec, artifact, observed, now)
            ready, desired, rollout_complete = served.ready, served.desired, served.complete
            problems += served.problems
            events += served.events
            status["rollout"] = served.rollout
            if served.rolled_back is not None:
                metric, message = served.rolled_back
                cond("RolledBack", True, f"{metric[0].upper()}{metric[1:]}Breached", message)
            elif served.rollout.get("canary") or served.rollout.get("watch"):
                cond("RolledBack", False, "Analysing", served.rollout.get("analysis") or "analysing the new artifact")
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
            if optimization_failed:
                cond("Available", False, "OptimizationFailed", "the optimization Job failed; see OptimizationSucceeded")
                cond("Progressing", False, "OptimizationFailed", "nothing to roll out until the spec changes")
            else:
                cond("Available", False, "NoArtifact", "waiting for the optimized artifact")
                cond("Progressing", True, "Optimizing", "optimizing the model")
        else:
            cond("Available", artifact_ready, "Published" if artifact_ready else "NoArtifact",
                 f"artifact at {artifact.get('uri')}" if artifact_ready else "waiting for the optimized artifact")
            if artifact_ready:
                status["endpoint"] = {"http": artifact.get("uri")}

        if serves and artifact_ready:
            scaling_status = self._autoscaler(body, spec, observed, now, cond, events)
            if scaling_status is not None:
                status["scaling"] = scaling_status

        if serves and artifact_ready and spec.monitoring.golden_probe.enabled:
            quality = self._probe(body, spec, observed, now)
            if quality is not None:
                status["quality"] = quality
                if quality.get("passed") is False:
                    cond("QualityDegraded", True, "GoldenSetDrift", quality.get("reason") or "live answers drifted from the report")
                elif quality.get("passed") is True:
                    cond("QualityDegraded", False, "GoldenSetMatches", quality.get("reason") or "live answers match the report")

        rollout_state = status.get("rollout") or {}
        if serves and artifact_ready and not rollout_state.get("canary") and not rollout_state.get("watch"):
            health = self._health(body, spec, now)
            if health is not None:
                status["health"] = health
                if health.get("healthy") is False:
                    problems.append(st.Problem(health["reason"], health["message"]))

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
        """The worker's summary from the Job's pods. A Job that succeeded after a retry has a
        failed pod too: the successful attempt's summary wins over any failed one."""
        found: list[dict[str, Any]] = []
        for pod in job_pods:
            messages = list(pod.get("terminationMessages", [])) + [p.get("message", "") for p in pod.get("problems", [])]
            found += [s for s in map(st.parse_summary, messages) if s is not None]
        return next((s for s in found if s.get("ok")), found[0] if found else None)

    def _serve(
        self, body: dict[str, Any], spec: ModelDeploymentSpec, artifact: dict[str, Any], observed: Observed, now: float
    ) -> ServeResult:
        name, namespace = body["metadata"]["name"], body["metadata"]["namespace"]
        serving = spec.serving or Serving()
        total = serving.replicas
        rollout = dict((body.get("status") or {}).get("rollout") or {})
        newest = ro.Track(uri=artifact["uri"], sha256=artifact["sha256"], revision=artifact["specHash"])
        plan = ro.plan_tracks(spec, rollout, newest, total)
        result = ServeResult(desired=total)

        stable_dep = self._track(body, spec, plan.stable, "stable", plan.stable_replicas, observed)
        canary_name = names.deployment_name(name, "canary")
        if plan.canary is not None:
            canary_dep = self._track(body, spec, plan.canary, "canary", plan.canary_replicas, observed)
        else:
            canary_dep = None
            if _child(observed.children, "Deployment", canary_name) is not None:
                self.kube.delete("apps/v1", "Deployment", canary_name, namespace)
                metrics.API_WRITES.labels("Deployment", "delete").inc()
        svc = serving_builder.build_service(name, namespace)
        self._ensure(body, svc, _child(observed.children, "Service", svc["metadata"]["name"]))
        pdb = serving_builder.build_pdb(name, namespace, total)
        pdb_name = names.truncate(name, "-triton")
        existing_pdb = _child(observed.children, "PodDisruptionBudget", pdb_name)
        if pdb is not None:
            self._ensure(body, pdb, existing_pdb)
        elif existing_pdb is not None:
            self.kube.delete("policy/v1", "PodDisruptionBudget", pdb_name, namespace)
        if spec.monitoring.service_monitor and self.kind_served(SERVICE_MONITOR, now):
            sm = serving_builder.build_service_monitor(name, namespace)
            self._apply_optional(body, sm, _child(observed.children, "ServiceMonitor", sm["metadata"]["name"]), now)

        stable_view = _track_view(stable_dep, plan.stable_replicas)
        canary_view = _track_view(canary_dep, plan.canary_replicas) if canary_dep else None
        result.ready = stable_view.ready + (canary_view.ready if canary_view else 0)
        result.complete = stable_view.complete and (canary_view.complete if canary_view else True)
        by_revision = _pod_problems(observed.pods)
        result.problems = [p for probs in by_revision.values() for p in probs] + stable_view.problems
        if canary_view:
            result.problems += canary_view.problems

        rollout = self._analyse(spec, name, namespace, plan, rollout, stable_view, canary_view, by_revision, now, result)
        result.rollout = rollout
        return result

    def _health(self, body: dict[str, Any], spec: ModelDeploymentSpec, now: float) -> dict[str, Any] | None:
        """status.health from Prometheus every health interval; the last verdict in between.
        The check time stays in memory: a write per check would cost an API call per object."""
        name, namespace = body["metadata"]["name"], body["metadata"]["namespace"]
        old = (body.get("status") or {}).get("health")
        last = self._health_checked.get((namespace, name))
        if self.prom is None or (last is not None and now - last < self.config.health_interval_seconds):
            return old
        self._health_checked[(namespace, name)] = now
        sel, window = promql.pod_matcher(name, namespace, track=None), self.config.prometheus_window
        try:
            rate = self.prom.query(promql.request_rate(sel, window))
            error_ratio = p99 = None
            if rate:
                error_ratio = self.prom.query(promql.error_ratio(sel, window))
                p99 = self.prom.query(promql.p99_latency_ms(sel, window))
        except PrometheusError as exc:
            return {"healthy": None, "reason": "MetricsUnavailable", "message": str(exc)}
        verdict = health_policy.judge(request_rate=rate, error_ratio=error_ratio, p99_ms=p99,
                                      max_error_ratio=spec.monitoring.max_error_ratio, p99_objective_ms=spec.monitoring.p99_latency_ms)

        def rounded(v: float | None) -> float | None:
            return None if v is None or v != v else float(f"{v:.3g}")  # NaN (an empty histogram) is no value

        return {"healthy": verdict.healthy, "reason": verdict.reason, "message": verdict.message,
                "requestRate": rounded(rate), "errorRatio": rounded(error_ratio), "p99LatencyMs": rounded(p99)}

    def forget(self, namespace: str, name: str) -> None:
        self._health_checked.pop((namespace, name), None)

    def _autoscaler(
        self, body: dict[str, Any], spec: ModelDeploymentSpec, observed: Observed, now: float, cond: Any,
        events: list[tuple[str, str, str]],
    ) -> dict[str, Any] | None:
        """Apply the HPA or ScaledObject the spec's engine wants, delete one it no longer wants,
        and report ScalingActive. Returns status.scaling for the external engines (the built-in
        scaler writes its own)."""
        name, namespace = body["metadata"]["name"], body["metadata"]["namespace"]
        auto = spec.autoscaling
        engine = auto.engine if auto is not None and auto.enabled else None
        keda = engine == ScalingEngine.keda and self.kind_served(autoscaling_builder.KEDA_API, now)
        obj, (value, reason, message) = autoscaling_builder.desired_autoscaler(
            name, namespace, spec, self.config.prometheus_url, self.config.prometheus_window, keda)
        before = st.get_condition(list((body.get("status") or {}).get("conditions") or []), "ScalingActive")
        cond("ScalingActive", value, reason, message)
        if reason == "KEDANotInstalled" and (before or {}).get("reason") != reason:
            events.append(("Warning", reason, message))
        obj_name = autoscaling_builder.autoscaler_name(name)
        for api_version, kind in (autoscaling_builder.HPA_API, autoscaling_builder.KEDA_API):
            existing = _child(observed.children, kind, obj_name)
            if obj is not None and obj["kind"] == kind:
                self._apply_optional(body, obj, existing, now)
            elif existing is not None:
                self.kube.delete(api_version, kind, obj_name, namespace)
                metrics.API_WRITES.labels(kind, "delete").inc()
        if obj is None or engine is None:
            return None
        old = dict((body.get("status") or {}).get("scaling") or {})
        current = (spec.serving or Serving()).replicas
        hpa = _child(observed.children, "HorizontalPodAutoscaler", obj_name) or {}
        desired = (hpa.get("status") or {}).get("desiredReplicas")
        scaling = {
            "engine": engine.value,
            "desired": int(desired) if desired is not None else current,
            "reason": message,
            "history": old.get("history") or [],
        }
        if old.get("lastScaleTime"):
            scaling["lastScaleTime"] = old["lastScaleTime"]
        return scaling

    def _probe(self, body: dict[str, Any], spec: ModelDeploymentSpec, observed: Observed, now: float) -> dict[str, Any] | None:
        """Run the golden-set probe Job on its interval and fold its result into status.quality."""
        name, namespace = body["metadata"]["name"], body["metadata"]["namespace"]
        quality = dict((body.get("status") or {}).get("quality") or {})
        probe_name = names.truncate(name, "-probe")
        job = next((j for j in observed.jobs if j.get("name") == probe_name), None)
        if job is not None:
            if not (job.get("succeeded") or job.get("finishedFailed")):
                return None
            pods = [p for p in observed.pods if p.get("labels", {}).get("job-name") == probe_name]
            summary = self._summary(pods)
            self.kube.delete("batch/v1", "Job", probe_name, namespace, propagation="Background")
            if summary is None:
                return {**quality, "time": now, "passed": None, "reason": job.get("failureMessage") or "the probe left no report"}
            result = {k: v for k, v in summary.items() if k in ("agreement", "cosine", "maxAbsError", "samples", "endpoints", "revision")}
            passed = summary.get("passed") if summary.get("ok") else None
            metrics.GOLDEN_AGREEMENT.labels(namespace, name).set(float(summary.get("agreement") or 0.0))
            return {**result, "time": now, "passed": passed, "reason": summary.get("reason") or ""}
        interval = spec.monitoring.golden_probe.interval_seconds
        if quality.get("time") and now - float(quality["time"]) < interval:
            return None
        rollout = (body.get("status") or {}).get("rollout") or {}
        stable = rollout.get("stable") or {}
        ready = [
            f"{p['podIP']}:{names.HTTP_PORT}"
            for p in observed.pods
            if p.get("ready") and p.get("podIP") and not p.get("deleting")
            and p.get("labels", {}).get(names.LABEL_COMPONENT) == "triton"
            and p.get("labels", {}).get(names.LABEL_REVISION) == stable.get("revision")
        ]
        if not stable.get("uri") or not ready:
            return None
        gate = spec.optimization.quality_gate.model_dump(mode="json", by_alias=True, exclude_none=True)
        job_obj = store_jobs.build_probe_job(
            name, namespace, self.config, artifact_uri=stable["uri"], endpoints=sorted(ready)[:8],
            samples=spec.monitoring.golden_probe.samples, gate=gate, revision=stable.get("revision", ""),
        )
        self._ensure(body, job_obj, None)
        return None

    def _track(
        self, body: dict[str, Any], spec: ModelDeploymentSpec, track: ro.Track, which: str, replicas: int, observed: Observed
    ) -> tuple[dict[str, Any], dict[str, Any] | None]:
        name, namespace = body["metadata"]["name"], body["metadata"]["namespace"]
        ref = serving_builder.ArtifactRef(uri=track.uri, sha256=track.sha256, revision=track.revision)
        dep = serving_builder.build_deployment(name, namespace, spec, self.config, ref, track=which, replicas=replicas)
        existing = _child(observed.children, "Deployment", dep["metadata"]["name"])
        self._ensure(body, dep, existing)
        return dep, existing

    def _analyse(
        self,
        spec: ModelDeploymentSpec,
        name: str,
        namespace: str,
        plan: ro.TrackPlan,
        rollout: dict[str, Any],
        stable_view: TrackView,
        canary_view: TrackView | None,
        by_revision: dict[str, list[st.Problem]],
        now: float,
        result: ServeResult,
    ) -> dict[str, Any]:
        rollout = dict(rollout)
        if rollout.get("stable") is None or plan.mode == "steady":
            if rollout.get("stable") is None:
                rollout["stable"] = plan.stable.to_status()
            rollout.pop("canary", None)
            rollout.pop("watch", None)
            rollout["analysis"] = None
            return rollout
        canary = spec.rollout.canary
        if plan.mode == "canary":
            assert plan.canary is not None and canary_view is not None
            subject, view, key, track = plan.canary, canary_view, "canary", "canary"
        else:
            subject, view, key, track = plan.stable, stable_view, "watch", "stable"
        state = dict(rollout.get(key) or {})
        if state.get("sha256") != subject.sha256:
            state = {**subject.to_status(), "started": None}
        if state.get("started") is None and view.complete:
            state["started"] = now
        crashing = None
        bad = [p for p in by_revision.get(subject.revision, []) if p.reason in _FATAL] + [p for p in view.problems if p.reason in _FATAL]
        if bad:
            crashing = f"{bad[0].reason}: {bad[0].message}"
        error_ratio = latency = baseline = None
        if state.get("started") is not None and not crashing and self.prom is not None:
            window = self.config.prometheus_window
            try:
                sel = promql.pod_matcher(name, namespace, track=track)
                # Without requests an error ratio of 0 is no evidence: report it as no data.
                if self.prom.query(promql.request_rate(sel, window)):
                    error_ratio = self.prom.query(promql.error_ratio(sel, window))
                if plan.mode == "canary":
                    base_sel = promql.pod_matcher(name, namespace, track="stable")
                    latency = self.prom.query(promql.avg_latency_ms(sel, window))
                    baseline = self.prom.query(promql.avg_latency_ms(base_sel, window))
            except PrometheusError as exc:
                result.analysis_note = f"analysis metrics unavailable: {exc}"
        verdict = ro.analyze(
            started=state.get("started"),
            now=now,
            duration=canary.analysis_seconds,
            error_ratio=error_ratio,
            max_error_ratio=canary.max_error_ratio if plan.mode == "canary" else spec.monitoring.max_error_ratio,
            latency=latency,
            baseline_latency=baseline,
            max_latency_ratio=canary.max_latency_ratio if plan.mode == "canary" else None,
            crashing=crashing,
        )
        rollout["analysis"] = f"{key} {subject.revision}: {verdict.reason}"
        if verdict.outcome == "wait":
            rollout[key] = state
        elif verdict.outcome == "pass":
            rollout["stable"] = subject.to_status()
            rollout.pop(key, None)
            result.events.append(("Normal", "Promoted", f"artifact {subject.revision} promoted after {key} analysis: {verdict.reason}"))
            result.rolled_back = None
        elif spec.rollout.auto_rollback:
            rollout["failedRevisions"] = [*(rollout.get("failedRevisions") or []), subject.revision][-50:]
            rollout.pop(key, None)
            previous = (rollout.get("stable") or {}).get("revision")
            message = f"rolled back {subject.revision} to {previous}: {verdict.reason}"
            result.rolled_back = (verdict.metric or "pods", message)
            result.events.append(("Warning", "RolledBack", message))
        else:
            rollout[key] = state
            result.problems.append(st.Problem("AnalysisFailed", f"{key} {subject.revision}: {verdict.reason} (autoRollback is off)"))
        return rollout

"""plan(md, observed, config) -> Plan: everything one reconcile decides, as a pure function.

The controller gathers Observed (its caches, the optional kinds served, Prometheus readings,
the time), calls plan(), and applies the result through kube/; `model-operator render`
prints the children of the same plan. The parts: optimization (the worker Job and its
outcome), serving (tracks, Service, PDB, rollout analysis), engines (HPA/KEDA), monitoring
(ServiceMonitor, health, golden probe); this module joins them into status and conditions."""

from __future__ import annotations

from typing import Any

from ..api.hashing import spec_hash
from ..api.types import ModelDeploymentSpec, Serving, Target
from ..api.validation import SpecError, load_spec
from ..config import OperatorConfig
from ..resources import common as names
from ..resources import images
from ..resources import serving as serving_builder
from . import status as st
from .autotune import plan_autotune
from .core import SERVICE_MONITOR, Child, Delete, Draft, Observed, Plan, Readings
from .engines import plan_engine
from .monitoring import plan_health, plan_quality, plan_service_monitor
from .optimization import OptimizationState, plan_optimization, worker_summary
from .serving import ServeResult, plan_serving

__all__ = [
    "SERVICE_MONITOR", "Child", "Delete", "Observed", "Plan", "Readings", "admitted_spec", "check_cluster_uris", "image_refusal", "plan",
    "worker_summary",
]


def check_cluster_uris(spec: ModelDeploymentSpec, store_claim: str | None = None) -> None:
    """Local paths exist only on the machine of `model-operator local`; in a cluster they would
    read whatever the worker image happens to hold. The PVC store's own claim is no source: pods
    mount only their MD's directory of it (docs/threat-model.md)."""
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
        if store_claim and uri.startswith(f"pvc://{store_claim}/"):
            raise SpecError(path, f"{uri!r}: claim {store_claim!r} is the artifact store, which pods see only their own directory of;"
                                  " put models and data on another claim")


def admitted_spec(md: dict[str, Any], config: OperatorConfig) -> ModelDeploymentSpec:
    """The spec, if this operator can act on it: valid, with cluster URIs and a known node pool.
    SpecError (naming the field) otherwise."""
    spec = load_spec(md.get("spec") or {})
    store = config.artifact_store
    check_cluster_uris(spec, store.claim if store.type == "pvc" else None)
    if spec.target != Target.device:
        serving_builder.resolve_pool(spec, config)
    return spec


def image_refusal(spec: ModelDeploymentSpec, config: OperatorConfig) -> str | None:
    """Why the spec's own Triton image may not run here (the operator's allow-list); None when it may.
    The worker image is the operator's alone: no spec field names it."""
    image = (spec.serving or Serving()).triton_image
    if image is None or spec.target == Target.device:
        return None
    return images.refusal("serving.tritonImage", image, config.triton_image_patterns())


def _refused(d: Draft, message: str) -> None:
    """A spec whose image the policy refuses: nothing is created, changed or deleted for it.
    What serves (the last admitted spec's Deployments) keeps serving, and status says both."""
    serving = (d.old_status.get("rollout") or {}).get("stable")
    tracks = [d.mine("Deployment", names.deployment_name(d.name, t)) for t in ("stable", "canary")]
    ready = sum(int(((t or {}).get("status") or {}).get("readyReplicas") or 0) for t in tracks)
    desired = int(d.old_status.get("replicas") or 0)
    d.plan.status.update(readyReplicas=ready, ready=f"{ready}/{desired}")
    if serving:
        message = f"{message}; still serving revision {serving.get('revision')} of the last admitted spec"
        if ready >= max(desired, 1):
            d.cond("Available", True, "MinimumReplicasReady", f"{ready}/{desired} Triton replicas ready (the last admitted spec)")
        else:
            d.cond("Available", False, "ReplicasNotReady", f"{ready}/{desired} Triton replicas ready (the last admitted spec)")
    else:
        d.cond("Available", False, "ImageNotAllowed", message)
    d.cond("Progressing", False, "ImageNotAllowed", message)
    d.cond("Degraded", True, "ImageNotAllowed", message)
    # Serving the old spec is Degraded (running, but not as specified); nothing to serve is Failed.
    phase = st.Phase.degraded if serving else st.Phase.failed
    d.plan.status.update(phase=phase.value, conditions=d.conditions)


def plan(md: dict[str, Any], observed: Observed, config: OperatorConfig) -> Plan:
    """The children, deletions, status and Events for one ModelDeployment in the observed state.
    A ModelDeployment being deleted plans nothing: the finalizer owns it then."""
    d = Draft(md, observed)
    if (md.get("metadata") or {}).get("deletionTimestamp"):
        return d.plan
    try:
        spec = admitted_spec(md, config)
    except SpecError as exc:
        d.cond("OptimizationSucceeded", False, "InvalidSpec", str(exc))
        d.plan.status.update(phase=st.Phase.failed.value, conditions=d.conditions)
        return d.plan
    refused = image_refusal(spec, config)
    if refused is not None:
        _refused(d, refused)
        return d.plan
    opt = plan_optimization(d, spec, spec_hash(spec), config)
    serves = spec.target != Target.device
    served = ServeResult()
    tune = plan_autotune(d, spec, config, opt.artifact) if serves and opt.artifact_ready else None
    if tune is not None and tune.status is not None:
        d.plan.status["autotune"] = tune.status
    if tune is not None and tune.serve is not None:
        served = _serve(d, tune.serve, config, opt)
    elif tune is not None:
        served = _autotuning(d, spec)
    elif serves:
        _waiting(d, spec, opt)
    else:
        _published(d, opt)
    _finish(d, opt, serves, served)
    return d.plan


def _serve(d: Draft, spec: ModelDeploymentSpec, config: OperatorConfig, opt: OptimizationState) -> ServeResult:
    status = d.plan.status
    served = plan_serving(d, spec, config, opt.artifact)
    status["rollout"] = served.rollout
    if served.rolled_back is not None:
        metric, message = served.rolled_back
        d.cond("RolledBack", True, f"{metric[0].upper()}{metric[1:]}Breached", message)
    elif served.rollout.get("canary") or served.rollout.get("watch"):
        d.cond("RolledBack", False, "Analysing", served.rollout.get("analysis") or "analysing the new artifact")
    status.update(
        replicas=served.desired, readyReplicas=served.ready, ready=f"{served.ready}/{served.desired}",
        selector=names.selector_string(names.serving_selector(d.name)),
        endpoint=serving_builder.endpoint(d.name, d.namespace, openai=serving_builder.is_generation(spec)),
    )
    if served.ready >= max(served.desired, 1) or served.desired == 0:
        d.cond("Available", True, "MinimumReplicasReady", f"{served.ready}/{served.desired} Triton replicas ready")
    else:
        d.cond("Available", False, "ReplicasNotReady", f"{served.ready}/{served.desired} Triton replicas ready")
    if served.held is not None:
        d.cond("Progressing", True, "NoCanaryTraffic", served.held)
        if d.old_condition("Progressing").get("reason") != "NoCanaryTraffic":
            d.event("Warning", "NoCanaryTraffic", served.held)
    elif served.complete and not opt.optimizing:
        d.cond("Progressing", False, "RolloutComplete", "serving the current artifact on every replica")
    else:
        d.cond("Progressing", True, "Rolling", "rollout in progress")
    plan_service_monitor(d, spec)
    scaling = plan_engine(d, spec, config)
    if scaling is not None:
        status["scaling"] = scaling
    _monitor(d, spec, config)
    return served


def _monitor(d: Draft, spec: ModelDeploymentSpec, config: OperatorConfig) -> None:
    status = d.plan.status
    if serving_builder.probes_quality(spec):
        judged = plan_quality(d, spec)
        if judged is not None:
            quality, verdict, reason = judged
            status["quality"] = quality
            d.cond("QualityDegraded", verdict, reason, quality.get("reason") or reason)
    rollout = status.get("rollout") or {}
    if rollout.get("canary") or rollout.get("watch"):
        return
    health = plan_health(d, spec)
    if health is not None:
        status["health"] = health
        if health.get("healthy") is False:
            d.problems.append(st.Problem(health["reason"], health["message"]))


def _waiting(d: Draft, spec: ModelDeploymentSpec, opt: OptimizationState) -> None:
    d.plan.status.update(
        replicas=0, readyReplicas=0, ready=f"0/{(spec.serving or Serving()).replicas}",
        selector=names.selector_string(names.serving_selector(d.name)),
    )
    if opt.failed:
        d.cond("Available", False, "OptimizationFailed", "the optimization Job failed; see OptimizationSucceeded")
        d.cond("Progressing", False, "OptimizationFailed", "nothing to roll out until the spec changes")
    else:
        d.cond("Available", False, "NoArtifact", "waiting for the optimized artifact")
        d.cond("Progressing", True, "Optimizing", "optimizing the model")


def _autotuning(d: Draft, spec: ModelDeploymentSpec) -> ServeResult:
    """The artifact is ready, the sweep runs: nothing new is rolled out yet (phase Deploying)."""
    job = (d.plan.status.get("autotune") or {}).get("job")
    replicas = (spec.serving or Serving()).replicas
    d.plan.status.update(
        replicas=0, readyReplicas=0, ready=f"0/{replicas}", selector=names.selector_string(names.serving_selector(d.name)),
    )
    d.cond("Available", False, "Autotuning", "waiting for the autotune sweep before the rollout")
    d.cond("Progressing", True, "Autotuning", f"autotune Job {job} is measuring Triton configs")
    return ServeResult(desired=replicas)


def _published(d: Draft, opt: OptimizationState) -> None:
    """A device target: the artifact itself is the product."""
    ready = opt.artifact_ready
    d.cond("Available", ready, "Published" if ready else "NoArtifact",
           f"artifact at {opt.artifact.get('uri')}" if ready else "waiting for the optimized artifact")
    if ready:
        d.plan.status["endpoint"] = {"http": opt.artifact.get("uri")}


def _finish(d: Draft, opt: OptimizationState, serves: bool, served: ServeResult) -> None:
    if d.plan.conflicts:
        message = "; ".join(d.plan.conflicts)
        d.cond("Progressing", False, "ChildConflict", message)
        d.problems.insert(0, st.Problem("ChildConflict", message))
    if d.problems:
        d.cond("Degraded", True, d.problems[0].reason, "; ".join(p.message for p in d.problems)[:1024])
    else:
        d.cond("Degraded", False, "Healthy", "no problems observed")
    phase = st.phase_for(
        spec_error=None, optimization_failed=opt.failed, optimizing=opt.optimizing, artifact_ready=opt.artifact_ready,
        serves=serves, ready_replicas=served.ready, desired_replicas=served.desired, rollout_complete=served.complete,
        problems=d.problems,
    )
    d.plan.status.update(phase=phase.value, conditions=d.conditions)
    if opt.artifact:
        d.plan.status["artifact"] = opt.artifact
    if opt.optimization:
        d.plan.status["optimization"] = opt.optimization

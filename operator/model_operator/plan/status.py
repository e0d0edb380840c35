"""What the status should say, computed from what the operator observed. Pure: the controller's
caches keep the summaries made here (summarize_job, summarize_pod), and plan() turns them into
phase, conditions and the problems worth an Event, so every rule is unit-testable with plain dicts.
(It lived in resources/, which holds the builders of single objects; status is no object.)"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from typing import Any

from ..api.types import Phase
from ..kube.api import DESIRED_HASH
from ..resources.common import LABEL_REVISION

CONDITION_TYPES = (
    "OptimizationSucceeded",
    "ArtifactReady",
    "Available",
    "Progressing",
    "Degraded",
    "MetricsAvailable",
    "ScalingActive",
    "QualityDegraded",
    "RolledBack",
)

# Container waiting reasons that won't heal by waiting.
BAD_WAITING = {
    "CrashLoopBackOff",
    "ImagePullBackOff",
    "ErrImagePull",
    "InvalidImageName",
    "CreateContainerConfigError",
    "CreateContainerError",
    "RunContainerError",
}


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Problem:
    """Something wrong with a child that a user must hear about."""

    reason: str
    message: str


@dataclass
class JobObservation:
    name: str
    active: int = 0
    succeeded: int = 0
    failed: int = 0
    finished_failed: bool = False
    failure_message: str = ""
    # Termination messages of the Job's pods, newest first.
    termination_messages: list[str] = field(default_factory=list)
    pod_problems: list[Problem] = field(default_factory=list)


def ownership(meta: dict[str, Any]) -> dict[str, Any]:
    """Who controls an object: its uid, the uid of its controller ownerReference ("owner") and
    that controller as Kind/name, so plan() can tell its own children from same-named strangers."""
    ref = next((r for r in meta.get("ownerReferences") or [] if r.get("controller")), None) or {}
    return {
        "uid": meta.get("uid"),
        "owner": ref.get("uid"),
        "controller": f"{ref.get('kind')}/{ref.get('name')}" if ref else None,
    }


def conflict_message(kind: str, name: str, summary: dict[str, Any]) -> str:
    controller = summary.get("controller")
    by = f"controlled by {controller}" if controller else "with no controller"
    return (f"{kind} {name} already exists, {by}, not by this ModelDeployment; the operator leaves it untouched: "
            "delete or rename it, or give the ModelDeployment another name")


# The counts of a child's status the plan reads (a Deployment's rollout, an HPA's desire).
CHILD_STATUS_COUNTS = ("observedGeneration", "replicas", "readyReplicas", "updatedReplicas", "availableReplicas",
                       "currentReplicas", "desiredReplicas")


def child_status(status: dict[str, Any]) -> dict[str, Any]:
    """The part of a child's status the plan reads: its counts, and a stalled rollout's condition.
    The cache holds one summary per child (three or more per ModelDeployment); whole statuses, with
    every condition's messages and times, made up most of a 10,000-object fleet's cache."""
    kept: dict[str, Any] = {k: status[k] for k in CHILD_STATUS_COUNTS if k in status}
    stalled = [
        {"type": cond.get("type"), "reason": cond.get("reason"), "message": cond.get("message", "")}
        for cond in status.get("conditions") or []
        if cond.get("type") == "Progressing" and cond.get("reason") == "ProgressDeadlineExceeded"
    ]
    if stalled:
        kept["conditions"] = stalled
    return kept


def summarize_child(obj: dict[str, Any]) -> dict[str, Any]:
    """Reduce a Deployment, Service, PDB, autoscaler or ServiceMonitor to what the cache keeps."""
    meta = obj.get("metadata") or {}
    return {
        "kind": obj.get("kind"),
        "name": meta.get("name"),
        "generation": meta.get("generation"),
        "desiredHash": (meta.get("annotations") or {}).get(DESIRED_HASH),
        "status": child_status(obj.get("status") or {}),
        "spec": {"replicas": (obj.get("spec") or {}).get("replicas")},
        **ownership(meta),
    }


def summarize_job(job: dict[str, Any]) -> dict[str, Any]:
    """Reduce a Job object to what the controller keeps in its cache."""
    status = job.get("status") or {}
    failed_cond = next(
        (c for c in status.get("conditions") or [] if c.get("type") == "Failed" and c.get("status") == "True"), None
    )
    return {
        "name": job["metadata"]["name"],
        "active": status.get("active") or 0,
        "succeeded": status.get("succeeded") or 0,
        "failed": status.get("failed") or 0,
        "finishedFailed": failed_cond is not None,
        "failureMessage": (failed_cond or {}).get("message", "") + (f" ({failed_cond.get('reason')})" if failed_cond else ""),
        "revision": (job["metadata"].get("labels") or {}).get(LABEL_REVISION),
        **ownership(job["metadata"]),
    }


def summarize_pod(pod: dict[str, Any]) -> dict[str, Any]:
    """Reduce a Pod to the facts status needs: phase, readiness, termination messages, problems."""
    meta, spec, status = pod.get("metadata") or {}, pod.get("spec") or {}, pod.get("status") or {}
    problems: list[dict[str, str]] = []
    messages: list[str] = []
    for cond in status.get("conditions") or []:
        if cond.get("type") == "PodScheduled" and cond.get("status") == "False" and cond.get("reason") == "Unschedulable":
            problems.append({"reason": "Unschedulable", "message": cond.get("message", "")})
    statuses = (status.get("initContainerStatuses") or []) + (status.get("containerStatuses") or [])
    restarts = 0
    exit_codes: list[int] = []
    for cs in statuses:
        restarts += cs.get("restartCount") or 0
        state, last = cs.get("state") or {}, cs.get("lastState") or {}
        waiting = state.get("waiting") or {}
        # The assemble init container refusing the artifact is the cause; its crash loop is the symptom.
        refused = cs.get("name") == "assemble" and any((t or {}).get("exitCode") for t in (state.get("terminated"), last.get("terminated")))
        # An out-of-memory kill is the cause; the crash loop it leads to is the symptom.
        oom = any((t or {}).get("reason") == "OOMKilled" for t in (state.get("terminated"), last.get("terminated")))
        if oom:
            limit = _memory_limit(spec, cs.get("name"))
            problems.append({"reason": "OOMKilled", "message": (
                f"container {cs.get('name')} was killed for using more memory than its limit"
                + (f" ({limit})" if limit else "") + f"; restarted {cs.get('restartCount') or 0} times"
            )})
        if waiting.get("reason") in BAD_WAITING and not refused and not oom:
            detail = (last.get("terminated") or {}).get("message") or waiting.get("message") or ""
            problems.append({"reason": waiting["reason"], "message": f"container {cs.get('name')}: {detail}".strip()})
        for term in (state.get("terminated"), last.get("terminated")):
            if not term:
                continue
            if term.get("message"):
                messages.append(term["message"])
            if term.get("exitCode"):
                exit_codes.append(int(term["exitCode"]))
            if term.get("reason") == "OOMKilled":
                continue
            elif term.get("exitCode") and cs.get("name") == "assemble":
                problems.append({"reason": "ArtifactRejected", "message": (term.get("message") or "").strip()})
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])
    return {
        "name": meta.get("name"),
        "phase": status.get("phase"),
        "ready": ready,
        "deleting": bool(meta.get("deletionTimestamp")),
        "node": spec.get("nodeName"),
        "podIP": status.get("podIP"),
        "labels": meta.get("labels") or {},
        "restarts": restarts,
        "terminationMessages": messages,
        "exitCodes": exit_codes,
        "problems": problems,
    }


def _memory_limit(spec: dict[str, Any], container: str | None) -> str | None:
    for c in (spec.get("initContainers") or []) + (spec.get("containers") or []):
        if c.get("name") == container:
            return ((c.get("resources") or {}).get("limits") or {}).get("memory")
    return None


def parse_summary(message: str) -> dict[str, Any] | None:
    """The worker's report summary from a termination message; None when it isn't one."""
    message = (message or "").strip()
    if not message.startswith("{"):
        return None
    try:
        data = json.loads(message)
    except ValueError:
        return None
    return data if isinstance(data, dict) and "ok" in data else None


def set_condition(
    conditions: list[dict[str, Any]],
    type_: str,
    status: str,
    reason: str,
    message: str,
    generation: int | None,
    now: str | None = None,
) -> list[dict[str, Any]]:
    """Kubernetes' SetStatusCondition: lastTransitionTime moves only when status changes."""
    out = [dict(c) for c in conditions if c.get("type") != type_]
    old = next((c for c in conditions if c.get("type") == type_), None)
    changed = old is None or old.get("status") != status
    cond = {
        "type": type_,
        "status": status,
        "reason": reason,
        "message": message[:1024],
        "observedGeneration": generation,
        "lastTransitionTime": (now or now_iso()) if changed or old is None else old.get("lastTransitionTime") or now or now_iso(),
    }
    out.append(cond)
    order = {t: i for i, t in enumerate(CONDITION_TYPES)}
    out.sort(key=lambda c: order.get(c["type"], len(order)))
    return out


def get_condition(conditions: list[dict[str, Any]], type_: str) -> dict[str, Any] | None:
    return next((c for c in conditions or [] if c.get("type") == type_), None)


def human_size(n: int | None) -> str | None:
    if n is None:
        return None
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f}{unit}" if unit == "B" else f"{size:.1f}{unit}"
        size /= 1024
    return None


def _merge_patch(current: Any, desired: Any) -> Any:
    """A JSON merge patch turning `current` into `desired`: changed values, and None for keys
    `desired` dropped (a merge patch keeps whatever it does not mention)."""
    if not (isinstance(current, dict) and isinstance(desired, dict)):
        return desired
    out: dict[str, Any] = {k: None for k in current if k not in desired}
    for key, value in desired.items():
        if current.get(key) != value:
            out[key] = _merge_patch(current.get(key), value)
    return out


def _pruned(value: Any) -> Any:
    """Without None values: the API server stores a merge patch's nulls as absent keys, so
    `{"analysis": None}` and `{}` are the same status (comparing them naively would patch every time)."""
    if isinstance(value, dict):
        return {k: _pruned(v) for k, v in value.items() if v is not None}
    return value


def status_changes(current: dict[str, Any], desired: dict[str, Any]) -> dict[str, Any]:
    """What a status merge patch must carry: the top-level keys whose value differs (top-level
    keys the reconcile does not produce, such as the scaler's, are left alone), and inside
    them, the keys that went away as None (e.g. rollout.canary after a promotion). Nothing
    when nothing changed: an idle fleet costs no writes."""
    out: dict[str, Any] = {}
    for key, value in desired.items():
        if value is None:
            if current.get(key) is not None:
                out[key] = None
            continue
        want = _pruned(value)
        if current.get(key) != want:
            out[key] = _merge_patch(current.get(key), want)
    return out


def phase_for(
    *,
    spec_error: str | None,
    optimization_failed: bool,
    optimizing: bool,
    artifact_ready: bool,
    serves: bool,
    ready_replicas: int,
    desired_replicas: int,
    rollout_complete: bool,
    problems: list[Problem],
) -> Phase:
    if spec_error or (optimization_failed and not artifact_ready):
        return Phase.failed
    if not artifact_ready:
        return Phase.optimizing if optimizing else Phase.pending
    if not serves:
        return Phase.optimizing if optimizing else Phase.ready
    if problems:
        return Phase.degraded
    if optimizing:
        return Phase.optimizing
    if desired_replicas == 0:
        return Phase.ready
    if ready_replicas >= desired_replicas and rollout_complete:
        return Phase.ready
    return Phase.deploying

"""plan(md, observed, config) over the states a ModelDeployment goes through. Each case builds
the MD and what the controller observed, calls plan() and checks children, deletions, status,
conditions and Events. No cluster, no clock, no Prometheus: plan() reads nothing else."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from model_operator.api.hashing import spec_hash
from model_operator.api.validation import load_spec
from model_operator.config import NodePool, OperatorConfig
from model_operator.plan import Observed, Plan, Readings, plan
from model_operator.plan import status as st
from model_operator.plan.core import SERVICE_MONITOR
from model_operator.resources import autoscaling as autoscaling_builder
from model_operator.resources import common as names

REPO = Path(__file__).resolve().parents[2]
CONFIG = OperatorConfig(node_pools={"gpu": NodePool(), "edge": NodePool()})
NOW = 1_000_000.0
# The ownership part of a cached summary of a child this MD controls (md() has uid-1).
OURS = {"owner": "uid-1", "controller": "ModelDeployment/digits-cloud"}


def md(spec_edit: dict[str, Any] | None = None, status: dict[str, Any] | None = None, **meta: Any) -> dict[str, Any]:
    doc = yaml.safe_load((REPO / "examples" / "cloud" / "modeldeployment.yaml").read_text())
    doc["metadata"].update(namespace="ns", uid="uid-1", generation=3, **meta)
    doc["spec"].pop("autoscaling")  # each case adds the engine it is about
    doc["spec"]["model"].pop("credentialsSecret")
    for key, value in (spec_edit or {}).items():
        doc["spec"][key] = value
    doc["status"] = status or {}
    return doc


def digest(doc: dict[str, Any]) -> str:
    return spec_hash(load_spec(doc["spec"]))


def job_name(doc: dict[str, Any]) -> str:
    return names.job_name(doc["metadata"]["name"], digest(doc))


def artifact(doc: dict[str, Any], sha: str = "a" * 64, spec_digest: str | None = None) -> dict[str, Any]:
    d = spec_digest or digest(doc)
    return {"uri": f"pvc://artifacts/ns/digits-cloud/{d}", "sha256": sha, "specHash": d}


def conditions(p: Plan) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in p.status.get("conditions") or []}


def condition(conds: list[dict[str, Any]], type_: str) -> dict[str, Any]:
    """st.get_condition for a condition the test expects to be there (typed without the None)."""
    found = st.get_condition(conds, type_)
    assert found is not None, f"no {type_} condition in {conds}"
    return found


def kinds(p: Plan) -> list[tuple[str, str]]:
    return [(c.obj["kind"], c.obj["metadata"]["name"]) for c in p.apply]


def summary_pod(job: str, summary: dict[str, Any] | None, exit_code: int = 0) -> dict[str, Any]:
    messages = [json.dumps(summary)] if summary is not None else []
    return {"name": f"{job}-x", "labels": {"job-name": job}, "terminationMessages": messages, "problems": [], "exitCode": exit_code}


def ready_children(p: Plan) -> list[dict[str, Any]]:
    """The cache as it is once every planned child exists and has rolled out."""
    out = []
    for child in p.apply:
        replicas = (child.obj.get("spec") or {}).get("replicas")
        status = {"readyReplicas": replicas, "updatedReplicas": replicas, "replicas": replicas, "observedGeneration": 1}
        out.append({"kind": child.obj["kind"], "name": child.obj["metadata"]["name"], "generation": 1,
                    "desiredHash": child.obj["metadata"]["annotations"][names.DOMAIN + "/desired-hash"], "status": status,
                    "uid": f"child-{child.obj['metadata']['name']}", **OURS})
    return out


def test_no_job_yet_starts_the_worker_job() -> None:
    doc = md()
    p = plan(doc, Observed(now=NOW), CONFIG)
    assert kinds(p) == [("Job", job_name(doc))]
    job = p.apply[0]
    assert job.counter == "jobs_started" and job.observed is None
    assert job.obj["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    assert conditions(p)["OptimizationSucceeded"] == ("Unknown", "JobStarted")
    assert conditions(p)["Progressing"] == ("True", "Optimizing")
    assert p.status["phase"] == "Optimizing" and p.status["optimization"] == {"job": job_name(doc)}
    assert p.delete == []


def test_job_running_applies_nothing_and_says_so() -> None:
    doc = md()
    obs = Observed(jobs=[{"name": job_name(doc), "active": 1, **OURS}], now=NOW)
    p = plan(doc, obs, CONFIG)
    assert p.apply == [] and conditions(p)["OptimizationSucceeded"] == ("Unknown", "JobRunning")
    assert conditions(p)["Degraded"] == ("False", "Healthy")


def test_a_worker_pod_that_cannot_start_is_degraded() -> None:
    doc = md()
    pod = {"name": "w", "labels": {"job-name": job_name(doc)}, "problems": [{"reason": "ImagePullBackOff", "message": "no such image"}]}
    p = plan(doc, Observed(jobs=[{"name": job_name(doc), "active": 1, **OURS}], pods=[pod], now=NOW), CONFIG)
    assert conditions(p)["OptimizationSucceeded"] == ("Unknown", "ImagePullBackOff")
    assert conditions(p)["Degraded"] == ("True", "ImagePullBackOff") and p.status["phase"] == "Optimizing"


CANDIDATES = [{"name": "static-int8", "passed": False, "quality": {"top1": 0.91}, "reason": "top-1 dropped 4.00 points"}]


@pytest.mark.parametrize("exit_code,reason,cond_reason", [
    (1, "internal error: the worker crashed", "WorkerFailed"),
    (2, "spec.model.inputs: no tensor named 'input'", "InvalidInput"),
    (3, "best static-int8: top-1 dropped 4.00 points, more than qualityGate.maxTop1Drop 0.50", "QualityGateRejected"),
])
def test_job_failed_is_reported_by_kind_and_not_restarted(exit_code: int, reason: str, cond_reason: str) -> None:
    doc = md()
    job = {"name": job_name(doc), **OURS, "finishedFailed": True, "failureMessage": "BackoffLimitExceeded"}
    summary = {"ok": False, "reason": reason, "exitCode": exit_code, **({"candidates": CANDIDATES} if exit_code == 3 else {})}
    obs = Observed(jobs=[job], pods=[summary_pod(job_name(doc), summary, exit_code)], now=NOW)
    p = plan(doc, obs, CONFIG)
    assert p.apply == []
    assert conditions(p)["OptimizationSucceeded"] == ("False", cond_reason)
    assert p.status["optimization"].get("candidates") == (CANDIDATES if exit_code == 3 else None)
    assert reason in condition(p.status["conditions"], "OptimizationSucceeded")["message"]
    assert conditions(p)["Progressing"] == ("False", "OptimizationFailed") and p.status["phase"] == "Failed"
    assert p.counts == {"jobs_failed": 1}
    assert ("Warning", conditions(p)["OptimizationSucceeded"][1]) in [(e[0], e[1]) for e in p.events]
    # The Job is gone (TTL): the failure stands until the spec changes; nothing is started again.
    again = plan({**doc, "status": p.status}, Observed(now=NOW + 60), CONFIG)
    assert again.apply == [] and again.status["phase"] == "Failed" and again.counts == {}


def test_the_pods_exit_code_classifies_a_failure_without_a_summary() -> None:
    doc = md()
    job = {"name": job_name(doc), **OURS, "finishedFailed": True, "failureMessage": "exit code 2 matching FailJob rule (PodFailurePolicy)"}
    pod = {**summary_pod(job_name(doc), None), "exitCodes": [2]}
    p = plan(doc, Observed(jobs=[job], pods=[pod], now=NOW), CONFIG)
    assert conditions(p)["OptimizationSucceeded"] == ("False", "InvalidInput")


def test_worker_job_fails_at_once_on_deterministic_exit_codes() -> None:
    doc = md()
    job = plan(doc, Observed(now=NOW), CONFIG).apply[0].obj
    rules = job["spec"]["podFailurePolicy"]["rules"]
    assert {"action": "FailJob", "onExitCodes": {"containerName": "worker", "operator": "In", "values": [2, 3]}} in rules
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"  # podFailurePolicy requires it


def test_job_succeeded_without_a_summary_waits_for_it() -> None:
    doc = md()
    p = plan(doc, Observed(jobs=[{"name": job_name(doc), "succeeded": 1, **OURS}], now=NOW), CONFIG)
    assert conditions(p)["OptimizationSucceeded"] == ("Unknown", "ReadingReport") and p.apply == []


def test_artifact_ready_deploys_stable_service_and_pdb() -> None:
    doc = md()
    summary = {"ok": True, "artifact": {**artifact(doc), "sizeBytes": 2048}, "optimization": {"recipe": "static-int8"}}
    obs = Observed(jobs=[{"name": job_name(doc), "succeeded": 1, **OURS}], pods=[summary_pod(job_name(doc), summary)], now=NOW)
    p = plan(doc, obs, CONFIG)
    assert kinds(p) == [("Deployment", "digits-cloud-triton"), ("Service", "digits-cloud-triton"), ("PodDisruptionBudget", "digits-cloud-triton")]
    assert conditions(p)["OptimizationSucceeded"] == ("True", "JobSucceeded")
    assert conditions(p)["ArtifactReady"] == ("True", "Verified")
    assert conditions(p)["Available"] == ("False", "ReplicasNotReady") and p.status["phase"] == "Deploying"
    assert p.status["artifact"]["size"] == "2.0KiB" and p.status["rollout"]["stable"]["sha256"] == "a" * 64
    assert p.counts == {"jobs_succeeded": 1}


def test_a_sharded_mds_children_and_their_pods_carry_its_shard() -> None:
    doc = md()
    doc["metadata"]["labels"] = {names.LABEL_SHARD: "team-b"}
    p = plan(doc, Observed(now=NOW), CONFIG)
    (job,) = [o for o in p.objects() if o["kind"] == "Job"]
    assert job["metadata"]["labels"][names.LABEL_SHARD] == "team-b"
    assert job["spec"]["template"]["metadata"]["labels"][names.LABEL_SHARD] == "team-b"
    doc["status"] = {"artifact": artifact(doc)}
    served = plan(doc, Observed(now=NOW), CONFIG).objects()
    assert {o["kind"] for o in served} >= {"Deployment", "Service"}
    assert all(o["metadata"]["labels"][names.LABEL_SHARD] == "team-b" for o in served)
    (dep,) = [o for o in served if o["kind"] == "Deployment"]
    assert dep["spec"]["template"]["metadata"]["labels"][names.LABEL_SHARD] == "team-b"


def stored(value: Any) -> Any:
    """A status as the API server keeps it: a merge patch's nulls are absent keys."""
    if isinstance(value, dict):
        return {k: stored(v) for k, v in value.items() if v is not None}
    return value


def serving_md(**spec_edit: Any) -> tuple[dict[str, Any], Plan]:
    """An MD whose artifact is published and whose children all rolled out."""
    doc = md(spec_edit)
    doc["status"] = {"artifact": artifact(doc)}
    first = plan(doc, Observed(now=NOW), CONFIG)
    doc["status"] = stored(first.status)
    return doc, first


def test_rolled_out_is_ready_and_idempotent() -> None:
    doc, first = serving_md()
    p = plan(doc, Observed(children=ready_children(first), now=NOW + 5), CONFIG)
    assert all(c.up_to_date for c in p.apply), "a second pass over a settled MD must write nothing"
    assert conditions(p)["Available"] == ("True", "MinimumReplicasReady")
    assert conditions(p)["Progressing"] == ("False", "RolloutComplete")
    assert p.status["phase"] == "Ready" and p.status["ready"] == "2/2"
    assert st.status_changes(doc["status"] | {"conditions": p.status["conditions"]}, p.status).keys() <= {"phase", "readyReplicas", "ready"}


def _new_artifact(doc: dict[str, Any], sha: str) -> dict[str, Any]:
    """The same MD after a spec change produced a new artifact."""
    doc = copy.deepcopy(doc)
    doc["spec"]["optimization"]["qualityGate"] = {"maxTop1Drop": 0.01}
    doc["status"]["artifact"] = artifact(doc, sha=sha)
    return doc


def test_rolling_update_moves_stable_and_watches_it() -> None:
    doc, first = serving_md(rollout={"strategy": "rolling"})
    new = _new_artifact(doc, "b" * 64)
    p = plan(new, Observed(children=ready_children(first), now=NOW + 5), CONFIG)
    dep = next(c for c in p.apply if c.obj["kind"] == "Deployment")
    assert not dep.up_to_date and "b" * 64 in json.dumps(dep.obj)
    assert p.status["rollout"]["watch"]["sha256"] == "b" * 64 and p.status["rollout"]["stable"]["sha256"] == "a" * 64
    assert conditions(p)["Progressing"] == ("True", "Rolling") and conditions(p)["RolledBack"] == ("False", "Analysing")


def canary_state(error_ratio: float | None, elapsed: float, latency: tuple[float, float] | None = None, requests: float = 500) -> Plan:
    doc, first = serving_md()
    new = _new_artifact(doc, "c" * 64)
    started = plan(new, Observed(children=ready_children(first), now=NOW), CONFIG)
    assert ("Deployment", "digits-cloud-triton-canary") in kinds(started)
    children = ready_children(started)
    new["status"] = started.status
    ready = plan(new, Observed(children=children, now=NOW + 1), CONFIG)  # the canary became ready: analysis starts
    assert ready.status["rollout"]["canary"]["started"] == NOW + 1
    new["status"] = ready.status
    metrics = {"canary": Readings(request_rate=5.0, error_ratio=error_ratio, latency_ms=(latency or (None, None))[0], requests=requests),
               "stable": Readings(request_rate=5.0, error_ratio=0.0, latency_ms=(latency or (None, None))[1])}
    return plan(new, Observed(children=children, metrics=metrics, now=NOW + 1 + elapsed), CONFIG)


def test_canary_under_analysis_waits() -> None:
    p = canary_state(error_ratio=0.0, elapsed=60)
    assert p.status["rollout"]["canary"]["sha256"] == "c" * 64
    assert "analysing: 60/300s" in p.status["rollout"]["analysis"]
    assert conditions(p)["RolledBack"] == ("False", "Analysing") and not any(e[1] == "Promoted" for e in p.events)


def test_canary_passing_its_window_is_promoted() -> None:
    p = canary_state(error_ratio=0.0, elapsed=301)
    assert p.status["rollout"]["stable"]["sha256"] == "c" * 64 and "canary" not in p.status["rollout"]
    assert any(e[:2] == ("Normal", "Promoted") for e in p.events)


def test_canary_without_traffic_is_held_not_promoted() -> None:
    p = canary_state(error_ratio=None, elapsed=301, requests=3)
    assert p.status["rollout"]["stable"]["sha256"] == "a" * 64 and p.status["rollout"]["canary"]["sha256"] == "c" * 64
    assert conditions(p)["Progressing"] == ("True", "NoCanaryTraffic")
    message = condition(p.status["conditions"], "Progressing")["message"]
    assert "3 requests" in message and "minRequests 10" in message
    assert any(e[:2] == ("Warning", "NoCanaryTraffic") for e in p.events)
    assert not any(e[1] in ("Promoted", "RolledBack") for e in p.events)


def test_canary_with_errors_is_rolled_back() -> None:
    p = canary_state(error_ratio=0.2, elapsed=30)
    assert conditions(p)["RolledBack"] == ("True", "ErrorRatioBreached")
    rollout = p.status["rollout"]
    assert rollout["stable"]["sha256"] == "a" * 64 and "canary" not in rollout and rollout["failedRevisions"]
    assert any(e[:2] == ("Warning", "RolledBack") for e in p.events)


def test_canary_slower_than_stable_is_rolled_back() -> None:
    p = canary_state(error_ratio=0.0, elapsed=30, latency=(20.0, 10.0))
    assert conditions(p)["RolledBack"] == ("True", "LatencyRatioBreached")


def test_rolled_back_revision_is_not_retried_and_the_canary_is_deleted() -> None:
    p = canary_state(error_ratio=0.2, elapsed=30)
    doc, first = serving_md()
    new = _new_artifact(doc, "c" * 64)
    new["status"] = {**p.status, "artifact": new["status"]["artifact"]}
    children = ready_children(first) + [{"kind": "Deployment", "name": "digits-cloud-triton-canary", "status": {}, **OURS}]
    again = plan(new, Observed(children=children, now=NOW + 60), CONFIG)
    assert ("Deployment", "digits-cloud-triton-canary") not in kinds(again)
    assert [(x.kind, x.name) for x in again.delete] == [("Deployment", "digits-cloud-triton-canary")]
    assert again.status["rollout"]["stable"]["sha256"] == "a" * 64


def test_engine_switched_from_keda_to_hpa_deletes_the_scaled_object() -> None:
    auto = {"engine": "hpa", "minReplicas": 2, "maxReplicas": 4, "metrics": [{"type": "cpuUtilization", "target": 70}]}
    doc, first = serving_md(autoscaling=auto)
    children = ready_children(first) + [{"kind": "ScaledObject", "name": "digits-cloud-triton", **OURS}]
    p = plan(doc, Observed(children=children, served=frozenset({autoscaling_builder.KEDA_API}), now=NOW), CONFIG)
    assert ("HorizontalPodAutoscaler", "digits-cloud-triton") in kinds(p)
    assert [(x.kind, x.name) for x in p.delete] == [("ScaledObject", "digits-cloud-triton")]
    assert conditions(p)["ScalingActive"] == ("True", "HorizontalPodAutoscaler") and p.status["scaling"]["engine"] == "hpa"


def test_optional_kinds_missing_are_reported_not_applied() -> None:
    auto = {"engine": "keda", "minReplicas": 2, "maxReplicas": 4, "metrics": [{"type": "queueTime", "target": 5}]}
    doc, first = serving_md(autoscaling=auto, monitoring={"serviceMonitor": True})
    assert any(e[:2] == ("Warning", "KEDANotInstalled") for e in first.events)
    p = plan(doc, Observed(now=NOW), CONFIG)
    assert {k for k, _ in kinds(p)} == {"Deployment", "Service", "PodDisruptionBudget"}
    assert conditions(p)["ScalingActive"] == ("False", "KEDANotInstalled")
    assert not any(e[1] == "KEDANotInstalled" for e in p.events), "said once, not every reconcile"
    served = plan(doc, Observed(served=frozenset({SERVICE_MONITOR, autoscaling_builder.KEDA_API}), now=NOW), CONFIG)
    optional = [c for c in served.apply if c.optional]
    assert {c.obj["kind"] for c in optional} == {"ScaledObject", "ServiceMonitor"}


def test_md_deleting_plans_nothing() -> None:
    doc, _ = serving_md()
    doc["metadata"]["deletionTimestamp"] = "2026-12-02T00:00:00Z"
    p = plan(doc, Observed(now=NOW), CONFIG)
    assert p.apply == [] and p.delete == [] and p.events == [] and "phase" not in p.status


@pytest.mark.parametrize("edit,field", [
    ({"model": {"uri": "digits.pt", "format": "torchscript", "inputs": [], "outputs": []}}, "model"),
    ({"serving": {"nodePool": "nowhere"}}, "serving.nodePool"),
    # The PVC store's claim is no source: pods mount only their own MD's directory of it.
    ({"model": {"uri": "pvc://model-artifacts/other-ns/victim/digits.pt", "format": "torchscript", "task": "classification",
                "inputs": [{"name": "input", "dtype": "float32", "shape": [-1, 1, 8, 8]}],
                "outputs": [{"name": "logits", "dtype": "float32", "shape": [-1, 10]}]}}, "model.uri"),
])
def test_invalid_spec_fails_with_the_field(edit: dict[str, Any], field: str) -> None:
    p = plan(md(edit), Observed(now=NOW), CONFIG)
    assert p.apply == [] and p.status["phase"] == "Failed"
    cond = condition(p.status["conditions"], "OptimizationSucceeded")
    assert cond["reason"] == "InvalidSpec" and field in cond["message"]


def test_device_target_publishes_the_artifact() -> None:
    doc = md({"target": "device", "serving": None, "rollout": None})
    doc["spec"] = {k: v for k, v in doc["spec"].items() if v is not None}
    doc["spec"]["optimization"] = {"quantization": {"mode": "dynamic-int8"}}
    doc["spec"].pop("data")
    assert kinds(plan(doc, Observed(now=NOW), CONFIG)) == [("Job", job_name(doc))]
    doc["status"] = {"artifact": artifact(doc)}
    p = plan(doc, Observed(now=NOW), CONFIG)
    assert p.apply == [] and p.status["phase"] == "Ready" and conditions(p)["Available"] == ("True", "Published")


def test_health_from_readings_degrades_and_recovers() -> None:
    doc, first = serving_md(monitoring={"maxErrorRatio": 0.01, "p99LatencyMs": 50})
    children = ready_children(first)
    bad = plan(doc, Observed(children=children, metrics={"all": Readings(10.0, 0.5, 20.0)}, now=NOW), CONFIG)
    assert bad.status["health"]["reason"] == "ErrorRatioHigh" and conditions(bad)["Degraded"] == ("True", "ErrorRatioHigh")
    slow = plan(doc, Observed(children=children, metrics={"all": Readings(10.0, 0.0, 80.0)}, now=NOW), CONFIG)
    assert slow.status["health"]["reason"] == "LatencyAboveObjective"
    down = plan(doc, Observed(children=children, metrics_errors={"all": "connection refused"}, now=NOW), CONFIG)
    assert down.status["health"]["reason"] == "MetricsUnavailable"
    doc["status"] = bad.status
    kept = plan(doc, Observed(children=children, now=NOW + 1), CONFIG)  # no readings this time: the last verdict stands
    assert kept.status["health"]["reason"] == "ErrorRatioHigh"


def test_golden_quality_comes_from_the_probe_containers_readings_never_from_a_job() -> None:
    doc, first = serving_md(monitoring={"goldenProbe": {"enabled": True, "intervalSeconds": 60}})
    rev = doc["status"]["rollout"]["stable"]["revision"]
    deployment = next(c.obj for c in first.apply if c.obj["kind"] == "Deployment")
    assert [c["name"] for c in deployment["spec"]["template"]["spec"]["containers"]] == ["triton", "probe"]
    children = ready_children(first)

    # No readings yet: unknown, not healthy; and no Job, ever.
    p = plan(doc, Observed(children=children, quality={}, now=NOW), CONFIG)
    assert not [k for k in kinds(p) if k[0] == "Job"]
    assert conditions(p)["QualityDegraded"] == ("Unknown", "NoProbeData") and p.status["quality"]["passed"] is None

    drift = {rev: {"time": NOW - 5, "ok": 1.0, "passed": 0.0, "agreement": 0.5, "cosine": 0.7, "samples": 16.0}}
    p = plan(doc, Observed(children=children, quality=drift, now=NOW), CONFIG)
    assert conditions(p)["QualityDegraded"] == ("True", "GoldenSetDrift")
    assert p.status["quality"] == {"time": NOW - 5, "passed": False, "revision": rev, "agreement": 0.5, "cosine": 0.7, "samples": 16,
                                   "reason": "a replica's live answers fail the quality gate (worst agreement 0.5, cosine 0.7)"}
    assert ("Warning", "GoldenSetDrift") in [(t, r) for t, r, _ in p.events]

    # The same verdict later (a jitter in the 6th digit included): status.quality is not rewritten
    # (its time stays) until the refresh period.
    doc["status"] = stored(p.status)
    later = {rev: {**drift[rev], "time": NOW + 55, "cosine": 0.7000001}}
    p2 = plan(doc, Observed(children=children, quality=later, now=NOW + 60), CONFIG)
    assert p2.status["quality"]["time"] == NOW - 5
    p3 = plan(doc, Observed(children=children, quality={rev: {**drift[rev], "time": NOW + 3695}}, now=NOW + 3700), CONFIG)
    assert p3.status["quality"]["time"] == NOW + 3695

    # Without a reading this time, the stored verdict holds until it is stale, then it is unknown.
    assert "quality" not in plan(doc, Observed(children=children, now=NOW + 60), CONFIG).status
    p4 = plan(doc, Observed(children=children, now=NOW + 3 * 60 + 61), CONFIG)
    assert conditions(p4)["QualityDegraded"] == ("Unknown", "ProbeStale") and p4.status["quality"]["passed"] is None


def test_golden_probe_off_or_generation_means_no_probe_container_and_no_quality() -> None:
    doc, first = serving_md(monitoring={"goldenProbe": {"enabled": False}})
    deployment = next(c.obj for c in first.apply if c.obj["kind"] == "Deployment")
    assert [c["name"] for c in deployment["spec"]["template"]["spec"]["containers"]] == ["triton"]
    service = next(c.obj for c in first.apply if c.obj["kind"] == "Service")
    assert "probe-metrics" not in [port["name"] for port in service["spec"]["ports"]]
    rev = doc["status"]["rollout"]["stable"]["revision"]
    p = plan(doc, Observed(children=ready_children(first), quality={rev: {"time": NOW, "ok": 1.0, "passed": 0.0}}, now=NOW), CONFIG)
    assert "QualityDegraded" not in conditions(p) and "quality" not in p.status


def test_a_running_job_shows_its_progress() -> None:
    doc = md()
    progress = {"step": "candidates (5)", "stepNumber": 4, "steps": 8, "candidate": 2, "candidates": 5, "elapsedSeconds": 40,
                "latest": [{"name": "dynamic-int8", "passed": True, "latencyMs": 0.2}]}
    obs = Observed(jobs=[{"name": job_name(doc), "active": 1, **OURS}], progress={job_name(doc): progress}, now=NOW)
    p = plan(doc, obs, CONFIG)
    shown = p.status["optimization"]["progress"]
    assert shown["summary"] == "step 4/8 candidates 2/5, 40s" and shown["latest"][0]["name"] == "dynamic-int8"
    assert "step 4/8 candidates 2/5" in condition(p.status["conditions"], "OptimizationSucceeded")["message"]

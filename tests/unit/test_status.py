"""Status rules: phase, conditions and what pods/Jobs tell us, from plain dicts."""

from __future__ import annotations

import json
from typing import Any

import pytest

from model_operator.api.types import Phase
from model_operator.plan import status as st


def test_set_condition_moves_transition_time_only_on_status_change() -> None:
    conds = st.set_condition([], "Available", "False", "NotReady", "0/1", 1, now="t1")
    conds = st.set_condition(conds, "Available", "False", "StillNotReady", "0/1", 2, now="t2")
    assert conds[0]["lastTransitionTime"] == "t1" and conds[0]["reason"] == "StillNotReady"
    conds = st.set_condition(conds, "Available", "True", "Ready", "1/1", 3, now="t3")
    assert conds[0]["lastTransitionTime"] == "t3" and conds[0]["observedGeneration"] == 3


def test_conditions_keep_a_stable_order() -> None:
    conds = st.set_condition([], "Degraded", "False", "Healthy", "", 1)
    conds = st.set_condition(conds, "OptimizationSucceeded", "True", "JobSucceeded", "", 1)
    assert [c["type"] for c in conds] == ["OptimizationSucceeded", "Degraded"]


def _pod(**status):
    return {"metadata": {"name": "p", "labels": {"job-name": "j"}}, "spec": {"nodeName": "n"}, "status": status}


def test_summarize_pod_reads_unschedulable_crashloop_oom_and_messages() -> None:
    pod = _pod(
        phase="Pending",
        conditions=[{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                     "message": "0/6 nodes are available: 6 Insufficient nvidia.com/gpu."}],
    )
    s = st.summarize_pod(pod)
    assert s["problems"] == [{"reason": "Unschedulable", "message": "0/6 nodes are available: 6 Insufficient nvidia.com/gpu."}]
    pod = _pod(
        phase="Running",
        containerStatuses=[{
            "name": "triton", "restartCount": 4,
            "state": {"waiting": {"reason": "CrashLoopBackOff"}},
            "lastState": {"terminated": {"exitCode": 137, "reason": "OOMKilled", "message": "failed to load model"}},
        }],
    )
    pod["spec"] = {"containers": [{"name": "triton", "resources": {"limits": {"memory": "64Mi"}}}]}
    s = st.summarize_pod(pod)
    # The out-of-memory kill is the cause, reported instead of the crash loop it causes.
    (problem,) = s["problems"]
    assert problem["reason"] == "OOMKilled" and s["restarts"] == 4
    assert "(64Mi)" in problem["message"] and "restarted 4 times" in problem["message"] and "triton" in problem["message"]
    assert s["terminationMessages"] == ["failed to load model"]


def test_a_crash_loop_without_an_oom_kill_stays_a_crash_loop() -> None:
    pod = _pod(phase="Running", containerStatuses=[{
        "name": "triton", "restartCount": 2, "state": {"waiting": {"reason": "CrashLoopBackOff"}},
        "lastState": {"terminated": {"exitCode": 1, "reason": "Error", "message": "failed to load model"}},
    }])
    (problem,) = st.summarize_pod(pod)["problems"]
    assert problem["reason"] == "CrashLoopBackOff" and "failed to load model" in problem["message"]


def test_a_refused_artifact_is_the_reason_not_the_crash_loop_it_causes() -> None:
    pod = _pod(phase="Pending", initContainerStatuses=[{
        "name": "assemble", "restartCount": 2, "state": {"waiting": {"reason": "CrashLoopBackOff"}},
        "lastState": {"terminated": {"exitCode": 2, "message": "refusing the artifact: model.onnx sha256 abc… differs from the report"}},
    }])
    (problem,) = st.summarize_pod(pod)["problems"]
    assert problem["reason"] == "ArtifactRejected" and "sha256" in problem["message"]


def test_parse_summary_accepts_only_worker_summaries() -> None:
    summary = st.parse_summary(json.dumps({"ok": False, "reason": "model.uri: not found"}))
    assert summary is not None and summary["reason"] == "model.uri: not found"
    assert st.parse_summary("Traceback ...") is None
    assert st.parse_summary('{"other": 1}') is None
    assert st.parse_summary("{broken") is None


def test_summarize_job_failure() -> None:
    job = {"metadata": {"name": "j", "labels": {}}, "status": {"failed": 3, "conditions": [{"type": "Failed", "status": "True",
                                                                                            "reason": "BackoffLimitExceeded",
                                                                                                "message": "Job has reached the specified backoff limit"}]}}
    s = st.summarize_job(job)
    assert s["finishedFailed"] and s["failed"] == 3 and "BackoffLimitExceeded" in s["failureMessage"]


BASE: dict[str, Any] = dict(spec_error=None, optimization_failed=False, optimizing=False, artifact_ready=True, serves=True,
            ready_replicas=2, desired_replicas=2, rollout_complete=True, problems=[])


@pytest.mark.parametrize(
    ("changes", "phase"),
    [
        ({}, Phase.ready),
        ({"spec_error": "bad"}, Phase.failed),
        ({"artifact_ready": False, "optimizing": True}, Phase.optimizing),
        ({"artifact_ready": False}, Phase.pending),
        ({"artifact_ready": False, "optimization_failed": True}, Phase.failed),
        ({"optimization_failed": True}, Phase.ready),  # a failed re-optimization keeps serving the last artifact
        ({"ready_replicas": 1}, Phase.deploying),
        ({"rollout_complete": False}, Phase.deploying),
        ({"problems": [st.Problem("CrashLoopBackOff", "x")]}, Phase.degraded),
        ({"serves": False}, Phase.ready),
        ({"optimizing": True}, Phase.optimizing),
    ],
)
def test_phase_for(changes, phase) -> None:
    assert st.phase_for(**{**BASE, **changes}) == phase


def test_status_changes_removes_nested_keys_that_went_away() -> None:
    current = {"rollout": {"stable": {"revision": "a"}, "canary": {"revision": "b", "started": 1.0}}, "scaling": {"desired": 3}}
    desired = {"rollout": {"stable": {"revision": "a"}, "failedRevisions": ["b"]}}
    assert st.status_changes(current, desired) == {"rollout": {"canary": None, "failedRevisions": ["b"]}}
    # Lists and scalars are replaced whole; a key equal on both sides is not sent.
    assert st.status_changes({"quality": {"samples": 3, "reason": "x"}}, {"quality": {"samples": 4, "reason": "x"}}) == {"quality": {"samples": 4}}


def test_status_changes_sees_none_as_absent() -> None:
    """What the API server stored after `{"analysis": None}` is a status without the key: no patch."""
    stored = {"rollout": {"stable": {"revision": "a"}}, "phase": "Ready"}
    assert st.status_changes(stored, {"rollout": {"stable": {"revision": "a"}, "analysis": None}, "phase": "Ready"}) == {}
    assert st.status_changes({"endpoint": {"http": "x"}}, {"endpoint": None}) == {"endpoint": None}
    assert st.status_changes({}, {"endpoint": None}) == {}


def test_status_changes_carries_only_what_differs() -> None:
    assert st.status_changes({"phase": "Ready", "replicas": 1}, {"phase": "Ready", "replicas": 2}) == {"replicas": 2}
    assert st.human_size(3_500_000) == "3.3MiB" and st.human_size(10) == "10B"


def test_a_retried_jobs_successful_summary_wins() -> None:
    from model_operator.plan import worker_summary

    failed = {"terminationMessages": [json.dumps({"ok": False, "reason": "killed"})], "problems": []}
    ok = {"terminationMessages": [json.dumps({"ok": True, "artifact": {"sha256": "x"}})], "problems": []}
    latest = worker_summary([failed, ok])
    assert latest is not None and latest["ok"] is True
    only_failed = worker_summary([failed])
    assert only_failed is not None and only_failed["reason"] == "killed"
    assert worker_summary([]) is None


def _deployment(stalled: bool) -> dict[str, Any]:
    """A Deployment as the API server returns it, one replica of one wanted."""
    conditions = [
        {"type": "Available", "status": "False", "reason": "MinimumReplicasUnavailable", "message": "Deployment does not have minimum availability.",
         "lastUpdateTime": "2026-12-04T10:00:00Z", "lastTransitionTime": "2026-12-04T10:00:00Z"},
        {"type": "Progressing", "status": "False" if stalled else "True",
         "reason": "ProgressDeadlineExceeded" if stalled else "NewReplicaSetAvailable",
         "message": 'ReplicaSet "m-triton-abc" has timed out progressing.' if stalled else 'ReplicaSet "m-triton-abc" has successfully progressed.',
         "lastUpdateTime": "2026-12-04T10:10:00Z", "lastTransitionTime": "2026-12-04T10:10:00Z"},
    ]
    ready = 0 if stalled else 1
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "m-triton", "uid": "u1", "generation": 3, "annotations": {st.DESIRED_HASH: "h1"}},
        "spec": {"replicas": 1},
        "status": {"observedGeneration": 3, "replicas": 1, "updatedReplicas": 1, "readyReplicas": ready, "availableReplicas": ready,
                   "unavailableReplicas": 1 - ready, "conditions": conditions},
    }


def test_a_child_summary_keeps_what_the_rollout_reads_and_drops_the_rest() -> None:
    from model_operator.plan.serving import track_view

    desired = {"metadata": {"annotations": {st.DESIRED_HASH: "h1"}}}
    stalled = st.summarize_child(_deployment(stalled=True))
    view = track_view(desired, stalled, replicas=1)
    assert (view.ready, view.complete) == (0, False)
    assert [(p.reason, p.message) for p in view.problems] == [("ProgressDeadlineExceeded", 'ReplicaSet "m-triton-abc" has timed out progressing.')]
    # Only the stalled rollout's condition is kept, without its times; other conditions go.
    assert stalled["status"]["conditions"] == [{"type": "Progressing", "reason": "ProgressDeadlineExceeded",
                                                "message": 'ReplicaSet "m-triton-abc" has timed out progressing.'}]
    assert "unavailableReplicas" not in stalled["status"]

    healthy = st.summarize_child(_deployment(stalled=False))
    view = track_view(desired, healthy, replicas=1)
    assert (view.ready, view.complete, view.problems) == (1, True, [])
    assert "conditions" not in healthy["status"]
    # An edit not yet seen by the Deployment controller is not complete.
    edited = _deployment(stalled=False)
    edited["metadata"]["generation"] = 4
    assert not track_view(desired, st.summarize_child(edited), replicas=1).complete


def test_an_autoscalers_summary_keeps_its_desired_replicas() -> None:
    hpa = {"kind": "HorizontalPodAutoscaler", "metadata": {"name": "m-triton", "uid": "u2"},
           "status": {"currentReplicas": 2, "desiredReplicas": 3, "lastScaleTime": "2026-12-04T10:00:00Z",
                      "currentMetrics": [{"type": "Pods", "pods": {"metric": {"name": "x"}, "current": {"averageValue": "2"}}}],
                      "conditions": [{"type": "ScalingActive", "status": "True", "reason": "ValidMetricFound", "message": "m"}]}}
    assert st.summarize_child(hpa)["status"] == {"currentReplicas": 2, "desiredReplicas": 3}

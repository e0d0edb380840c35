"""plan() with serving.autotune: the sweep Job before the rollout (the serving pod's placement,
Triton in explicit mode as a sidecar), the config chosen from the reported table served and the
table in status.autotune, a failed sweep serving the untuned config without a retry, a new sweep
for a new artifact or serving block but not for a replica change."""

from __future__ import annotations

import json
from typing import Any

from test_plan import CONFIG, NOW, artifact, conditions, md, stored

from model_operator.api.validation import load_spec
from model_operator.plan import Observed, Plan, plan
from model_operator.resources import autotune as builder
from model_operator.triton import tuning

SERVING = {
    "nodePool": "gpu", "replicas": 2, "maxBatchSize": 64, "autotune": True,
    "dynamicBatching": {"preferredBatchSizes": [16, 32], "maxQueueDelayMicroseconds": 200},
    "resources": {"requests": {"cpu": "2", "memory": "4Gi"}, "limits": {"cpu": "4"}},
}


def tuned_md(serving: dict[str, Any] | None = None) -> dict[str, Any]:
    doc = md({"serving": serving or SERVING})
    doc["status"] = {"artifact": artifact(doc)}
    return doc


def sweep_job(doc: dict[str, Any]) -> str:
    spec = load_spec(doc["spec"])
    assert spec.serving is not None
    return builder.job_name(doc["metadata"]["name"], doc["status"]["artifact"]["sha256"], spec.serving)


def table(*rows: tuple[tuning.TritonKnobs, float, float]) -> list[dict[str, Any]]:
    return [tuning.SweepRow(k, rps, p95 / 2, p95, p95 * 2, 0, 1000).as_dict() for k, rps, p95 in rows]


BASE = tuning.baseline(4)
FAST = tuning.TritonKnobs(64, 500, 2, 2)
FASTER_BUT_SLOW_P95 = tuning.TritonKnobs(128, 2000, 1, 4)
FASTER_BUT_SMALLER_BATCHES = tuning.TritonKnobs(16, 100, 1, 4)  # would refuse the 64-image batches the spec allows
TABLE = table((BASE, 1000.0, 10.0), (FAST, 2800.0, 9.0), (FASTER_BUT_SLOW_P95, 3500.0, 14.0), (FASTER_BUT_SMALLER_BATCHES, 4000.0, 5.0))


def finished(doc: dict[str, Any], summary: dict[str, Any] | None, *, ok: bool = True) -> Observed:
    job = sweep_job(doc)
    messages = [json.dumps(summary)] if summary is not None else []
    pod = {"name": f"{job}-x", "labels": {"job-name": job}, "terminationMessages": messages, "problems": []}
    state = {"succeeded": 1} if ok else {"finishedFailed": True, "failureMessage": "BackoffLimitExceeded"}
    return Observed(jobs=[{"name": job, **state}], pods=[pod], now=NOW)


def deployment(p: Plan) -> dict[str, Any]:
    return next(c.obj for c in p.apply if c.obj["kind"] == "Deployment")


def served_serving(p: Plan) -> dict[str, Any]:
    args = deployment(p)["spec"]["template"]["spec"]["initContainers"][0]["args"]
    return dict(json.loads(args[args.index("--serving-json") + 1]))


def test_the_sweep_runs_before_the_rollout_where_triton_will_run() -> None:
    doc = tuned_md()
    p = plan(doc, Observed(now=NOW), CONFIG)
    assert [c.obj["kind"] for c in p.apply] == ["Job"], "nothing is rolled out while the sweep runs"
    job = p.apply[0].obj
    assert job["metadata"]["name"] == sweep_job(doc)
    pod = job["spec"]["template"]["spec"]
    assemble, triton = pod["initContainers"]
    (sweep,) = pod["containers"]
    assert assemble["name"] == "assemble" and triton["restartPolicy"] == "Always"
    assert "--model-control-mode=explicit" in triton["args"]
    assert triton["resources"]["limits"]["cpu"] == "4"  # the serving container's resources
    assert sweep["command"] == ["model-operator", "autotune"]
    assert sweep["args"][sweep["args"].index("--cores") + 1] == "4"
    assert {m["name"]: m.get("readOnly", False) for m in triton["volumeMounts"]}["models"] is False
    assert job["spec"]["backoffLimit"] == 0 and pod["restartPolicy"] == "Never"
    # The operator's configuration bounds the sweep, and the deadline follows from it.
    arg = dict(zip(sweep["args"][::2], sweep["args"][1::2]))
    assert arg["--duration"] == "5" and arg["--limit"] == "16" and arg["--concurrency"] == "16"
    short = CONFIG.model_copy(update={"autotune_seconds_per_config": 0.5, "autotune_max_configs": 3})
    short_job = plan(doc, Observed(now=NOW), short).apply[0].obj
    short_arg = dict(zip(*[iter(short_job["spec"]["template"]["spec"]["containers"][0]["args"])] * 2))
    assert short_arg["--duration"] == "0.5" and short_arg["--limit"] == "3"
    assert short_job["spec"]["activeDeadlineSeconds"] < job["spec"]["activeDeadlineSeconds"]
    assert p.status["autotune"]["state"] == "Running"
    assert conditions(p)["Progressing"] == ("True", "Autotuning") and p.status["phase"] == "Deploying"
    assert ("Normal", "AutotuneStarted") in [(t, r) for t, r, _ in p.events]


def test_the_chosen_config_is_served_and_the_table_is_in_status() -> None:
    doc = tuned_md()
    summary = {"ok": True, "cores": 4, "concurrency": 16, "chosen": "whatever the Job said", "table": TABLE}
    p = plan(doc, finished(doc, summary), CONFIG)
    # Recomputed from the table: the fastest row whose p95 is no worse than batch 1's, batches as large as the spec's.
    assert p.status["autotune"]["chosen"] == FAST.name and p.status["autotune"]["state"] == "Succeeded"
    assert p.status["autotune"]["table"] == TABLE and p.status["autotune"]["cores"] == 4
    serving = served_serving(p)
    assert serving["maxBatchSize"] == 64 and serving["instanceCount"] == 2 and serving["intraOpThreads"] == 2
    assert serving["dynamicBatching"] == {"enabled": True, "preferredBatchSizes": [16, 32], "maxQueueDelayMicroseconds": 500}
    # The next pass reads the table from status and serves the same config without the Job.
    doc["status"] = stored(p.status)
    again = plan(doc, Observed(now=NOW + 5), CONFIG)
    assert served_serving(again) == serving and "Job" not in [c.obj["kind"] for c in again.apply]


def test_a_failed_sweep_serves_the_untuned_config_and_is_not_retried() -> None:
    doc = tuned_md()
    p = plan(doc, finished(doc, {"ok": False, "reason": "autotune sweep failed: connection refused"}, ok=False), CONFIG)
    assert p.status["autotune"]["state"] == "Failed" and "connection refused" in p.status["autotune"]["message"]
    assert served_serving(p)["maxBatchSize"] == 64 and "intraOpThreads" not in served_serving(p)
    assert ("Warning", "AutotuneFailed") in [(t, r) for t, r, _ in p.events]
    doc["status"] = stored(p.status)
    again = plan(doc, Observed(now=NOW + 5), CONFIG)
    assert "Job" not in [c.obj["kind"] for c in again.apply] and served_serving(again)["maxBatchSize"] == 64


def test_a_succeeded_job_whose_report_is_not_cached_yet_is_waited_for() -> None:
    doc = tuned_md()
    p = plan(doc, finished(doc, None), CONFIG)
    assert p.status["autotune"]["state"] == "Running" and p.apply == [] and p.status["phase"] == "Deploying"


def test_replicas_do_not_start_a_new_sweep_but_the_serving_block_and_the_artifact_do() -> None:
    doc = tuned_md()
    name = sweep_job(doc)
    assert sweep_job(tuned_md({**SERVING, "replicas": 5})) == name
    assert sweep_job(tuned_md({**SERVING, "maxBatchSize": 32})) != name
    other = tuned_md()
    other["status"]["artifact"]["sha256"] = "b" * 64
    assert sweep_job(other) != name


def test_without_autotune_nothing_changes() -> None:
    doc = tuned_md({**SERVING, "autotune": False})
    p = plan(doc, Observed(now=NOW), CONFIG)
    assert "autotune" not in p.status and served_serving(p)["maxBatchSize"] == 64


def test_cpu_cores_of_a_container() -> None:
    assert builder.cpu_cores({"limits": {"cpu": "3500m"}, "requests": {"cpu": "1"}}) == 3
    assert builder.cpu_cores({"requests": {"cpu": "500m"}}) == 1
    assert builder.cpu_cores({"requests": {"cpu": "2"}}) == 2
    assert builder.cpu_cores({}) == 0

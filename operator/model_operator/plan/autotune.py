"""The serving autotune part of the plan (`serving.autotune: true`): before an artifact is rolled
out, a Job on the serving pool measures the sweep grid on a real Triton; the config that
`triton.tuning.choose` picks from the measured table is served, and the table goes to
status.autotune. The choice is recomputed here from the table the Job reported, so what is
served is a function of the table alone.

A new artifact or a change of the serving block (other than replicas) runs a new sweep; a failed
sweep serves the untuned config (a Warning Event and status.autotune.message say why) and is not
retried until the artifact or the serving block changes. While a sweep runs nothing new is
rolled out: a Deployment that already serves stays as it is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..api.types import ModelDeploymentSpec, Serving
from ..config import OperatorConfig
from ..resources import autotune as builder
from ..resources.serving import ArtifactRef
from ..triton import tuning
from .core import Draft
from .optimization import worker_summary


@dataclass
class AutotuneResult:
    serve: ModelDeploymentSpec | None  # the spec to serve; None: wait for the sweep
    status: dict[str, Any] | None  # status.autotune; None: autotune is off


def tuned_spec(spec: ModelDeploymentSpec, table_rows: list[dict[str, Any]]) -> tuple[ModelDeploymentSpec, str | None]:
    """The spec with the chosen row's knobs applied (unchanged when nothing is usable), and the
    chosen row's name."""
    base = spec.serving or Serving()
    chosen = tuning.choose(tuning.table_from_dicts(table_rows), min_max_batch=base.max_batch_size)
    if chosen is None:
        return spec, None
    serving = tuning.apply_knobs(base, chosen.knobs)
    return spec.model_copy(update={"serving": serving}), chosen.knobs.name


def plan_autotune(d: Draft, spec: ModelDeploymentSpec, config: OperatorConfig, artifact: dict[str, Any]) -> AutotuneResult:
    serving = spec.serving or Serving()
    if not serving.autotune:
        return AutotuneResult(spec, None)
    ref = ArtifactRef(uri=artifact["uri"], sha256=artifact["sha256"], revision=artifact["specHash"])
    shash = builder.serving_hash(serving)
    job_name = builder.job_name(d.name, ref.sha256, serving)
    old = dict(d.old_status.get("autotune") or {})
    same = old.get("artifactSha256") == ref.sha256 and old.get("servingHash") == shash
    base = {"job": job_name, "artifactSha256": ref.sha256, "servingHash": shash}
    if same and old.get("state") == "Succeeded":
        served, _ = tuned_spec(spec, list(old.get("table") or []))
        return AutotuneResult(served, old)
    if same and old.get("state") == "Failed":
        return AutotuneResult(spec, old)
    job = d.observed.job(job_name)
    if job is None:
        d.want(builder.build_autotune_job(d.name, d.namespace, spec, config, ref))
        d.event("Normal", "AutotuneStarted", f"autotune Job {job_name} measures Triton configs before the rollout")
        return AutotuneResult(None, {**base, "state": "Running"})
    summary = worker_summary(d.observed.job_pods(job_name))
    if job.get("succeeded") and summary is None:
        return AutotuneResult(None, {**base, "state": "Running"})  # the pod's report is not in the cache yet
    if job.get("succeeded") and summary and summary.get("ok"):
        table = list(summary.get("table") or [])
        served, chosen = tuned_spec(spec, table)
        status = {**base, "state": "Succeeded", "chosen": chosen, "cores": summary.get("cores"),
                  "concurrency": summary.get("concurrency"), "table": table}
        d.event("Normal", "Autotuned", f"serving {chosen} (the sweep's best of {len(table)} configs)")
        return AutotuneResult(served, status)
    if job.get("finishedFailed") or job.get("succeeded"):
        message = (summary or {}).get("reason") or job.get("failureMessage") or "the sweep left no report"
        d.event("Warning", "AutotuneFailed", f"Job {job_name}: {message}; serving the untuned config")
        return AutotuneResult(spec, {**base, "state": "Failed", "message": f"Job {job_name}: {message}"[:1024]})
    return AutotuneResult(None, {**base, "state": "Running"})

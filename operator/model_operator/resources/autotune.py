"""The serving autotune Job: the serving pod itself (same node pool, selectors, tolerations,
Triton image and resources, the same `assemble` init container), with Triton in explicit model
control as a native sidecar and `model-operator autotune` on the worker image as the Job's
container. The sweep writes each candidate config next to the assembled model, has Triton load
it, drives it with the load generator and reports the table in its termination message."""

from __future__ import annotations

import copy
import hashlib
import json
import math
from typing import Any, Final

from ..api.types import ModelDeploymentSpec, Serving
from ..config import OperatorConfig
from ..triton import tuning
from . import common as c
from .serving import ArtifactRef, build_deployment

TERMINATION_LOG: Final = "/dev/termination-log"
# Per config: loading the model (a few seconds for the Python backend), 1 s warm-up, the counted load.
LOAD_ALLOWANCE_SECONDS: Final = 15
# Image pulls, `assemble` and Triton's start.
START_ALLOWANCE_SECONDS: Final = 300


def deadline_seconds(config: OperatorConfig) -> int:
    per_config = LOAD_ALLOWANCE_SECONDS + 1 + config.autotune_seconds_per_config
    return int(START_ALLOWANCE_SECONDS + config.autotune_max_configs * per_config)


def serving_hash(serving: Serving) -> str:
    """What a sweep depends on in the serving block: everything but replicas and the autotune
    switch itself (a replica change must not start a new sweep)."""
    data = serving.model_dump(mode="json", by_alias=True, exclude_none=True, exclude={"replicas", "autotune"})
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:10]


def job_name(md_name: str, artifact_sha256: str, serving: Serving) -> str:
    return c.truncate(md_name, f"-tune-{artifact_sha256[:6]}{serving_hash(serving)[:4]}")


def cpu_cores(resources: dict[str, dict[str, str]]) -> int:
    """Whole cores of a container's CPU limit (else its request), at least 1; 0 when neither is
    set (the sweep then counts the CPUs it sees)."""
    value = (resources.get("limits") or {}).get("cpu") or (resources.get("requests") or {}).get("cpu")
    if not value:
        return 0
    text = str(value)
    cores = float(text[:-1]) / 1000 if text.endswith("m") else float(text)
    return max(1, math.floor(cores + 1e-9))


def build_autotune_job(
    name: str, namespace: str, spec: ModelDeploymentSpec, config: OperatorConfig, artifact: ArtifactRef
) -> dict[str, Any]:
    serving = spec.serving or Serving()
    pod = copy.deepcopy(build_deployment(name, namespace, spec, config, artifact, replicas=1)["spec"]["template"]["spec"])
    (assemble,) = pod["initContainers"]
    # Triton only: the golden-set probe container (when the spec has one) has nothing to do in a sweep.
    triton = next(ctr for ctr in pod["containers"] if ctr["name"] == "triton")
    triton["args"] = [a if not a.startswith("--model-control-mode=") else "--model-control-mode=explicit" for a in triton["args"]]
    triton["args"] = [a for a in triton["args"] if not a.startswith("--strict-readiness")] + ["--strict-readiness=false"]
    triton["volumeMounts"] = [{"name": "models", "mountPath": "/models"}, {"name": "tmp", "mountPath": "/tmp"}]
    for probe in ("readinessProbe", "livenessProbe"):
        triton.pop(probe, None)
    # A native sidecar: started after `assemble`, stopped when the sweep's container ends.
    triton["restartPolicy"] = "Always"
    serving_json = json.dumps(serving.model_dump(mode="json", by_alias=True, exclude_none=True), sort_keys=True)
    cores = cpu_cores(triton.get("resources") or {})
    sweep: dict[str, Any] = {
        "name": "autotune",
        "image": config.worker_image,
        "imagePullPolicy": config.image_pull_policy,
        "command": ["model-operator", "autotune"],
        "args": [
            "--repository", "/models",
            "--name", name,
            "--target", spec.target.value,
            "--serving-json", serving_json,
            "--grpc", f"127.0.0.1:{c.GRPC_PORT}",
            "--cores", str(cores),
            "--concurrency", str(tuning.DEFAULT_CONCURRENCY),
            "--duration", f"{config.autotune_seconds_per_config:g}",
            "--limit", str(config.autotune_max_configs),
            "--report-summary", TERMINATION_LOG,
        ],
        "env": [{"name": "HOME", "value": "/tmp"}, {"name": "PYTHONUNBUFFERED", "value": "1"}],
        "resources": c.merge_resources(config.worker_resources),
        "volumeMounts": [{"name": "models", "mountPath": "/models"}, {"name": "tmp", "mountPath": "/tmp"}],
        "securityContext": c.container_security_context(),
        "terminationMessagePath": TERMINATION_LOG,
        "terminationMessagePolicy": "File",
    }
    pod["initContainers"] = [assemble, triton]
    pod["containers"] = [sweep]
    pod["restartPolicy"] = "Never"
    labels = {**c.base_labels(name, "autotune"), c.LABEL_REVISION: artifact.revision}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": job_name(name, artifact.sha256, serving),
            "namespace": namespace,
            "labels": labels,
            "annotations": {c.ANNOTATION_SHA256: artifact.sha256},
        },
        "spec": {
            # A failed sweep is not retried: the untuned config is served and status says why.
            "backoffLimit": 0,
            "activeDeadlineSeconds": deadline_seconds(config),
            "ttlSecondsAfterFinished": config.job_ttl_seconds,
            "template": {"metadata": {"labels": labels}, "spec": pod},
        },
    }

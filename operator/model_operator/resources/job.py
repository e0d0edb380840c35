"""The optimization Job: runs `model-operator optimize` on the worker image."""

from __future__ import annotations

import json
from typing import Any

from ..api.hashing import spec_hash as compute_hash
from ..api.types import ModelDeploymentSpec, Target
from ..config import NodePool, OperatorConfig
from ..optimize.progress import PORT as PROGRESS_PORT
from ..storage.s3 import SOURCE_PREFIX
from . import access as a
from . import common as c
from .serving import pool_selector, resolve_pool

TERMINATION_LOG = "/dev/termination-log"
# The worker's exit codes that retrying cannot change (docs/contracts.md): 2 bad input, 3 gate rejected.
DETERMINISTIC_EXIT_CODES = (2, 3)


def spec_uris(spec: ModelDeploymentSpec) -> list[str | None]:
    return [
        spec.model.uri,
        spec.data.calibration.uri if spec.data.calibration else None,
        spec.data.validation.uri if spec.data.validation else None,
    ]


def measurement_pool(spec: ModelDeploymentSpec, config: OperatorConfig) -> tuple[str, NodePool] | None:
    """The node pool the optimization Job runs on, so that the search times its candidates on the
    hardware that will serve the chosen one: the target's benchmark pool, else (worker_placement
    target-pool) the serving pool. None: the worker's own placement (and for targets without a pool)."""
    named = config.benchmark_pools.get(spec.target.value)
    if named:
        return named, config.node_pools[named]  # the config refuses names it has no pool for
    if config.worker_placement != "target-pool":
        return None
    name, pool = resolve_pool(spec, config)
    return (name, pool) if name else None


def uses_gpu(spec: ModelDeploymentSpec, pool: NodePool) -> bool:
    return bool(spec.target == Target.cloud and spec.serving and spec.serving.gpus and pool.gpu_product)


def build_worker_job(name: str, namespace: str, spec: ModelDeploymentSpec, config: OperatorConfig) -> dict[str, Any]:
    digest = compute_hash(spec)
    store = config.artifact_store
    output = store.uri_for(namespace, name, digest)
    spec_json = json.dumps(spec.model_dump(mode="json", by_alias=True, exclude_none=True), sort_keys=True)
    labels = {**c.base_labels(name, "optimizer"), c.LABEL_REVISION: digest}

    # Inputs' claims read-only; a PVC store only at this MD's own directory, the one place the
    # worker may write (an input on the store's claim is not reachable: the store is not a source).
    input_claims = [claim for claim in c.claims_in_uris(spec_uris(spec)) if store.type != "pvc" or claim != store.claim]
    volumes, mounts = c.claim_volumes(input_claims)
    if store.type == "pvc":
        own_volume, own_mount = c.own_subpath_volume(store.claim, namespace, name, read_only=False)
        volumes.append(own_volume)
        mounts.append(own_mount)
    volumes.append({"name": "tmp", "emptyDir": {}})
    mounts.append({"name": "tmp", "mountPath": "/tmp"})
    publish_args: list[str] = []
    if a.uses_urls(store):
        # The worker publishes with one pre-signed PUT for its own output, and holds no store key.
        volumes.append(a.volume(name))
        mounts.append(a.mount())
        publish_args = ["--upload-url-file", a.grant_path("put", output)]

    env: list[dict[str, Any]] = [
        {"name": "MODEL_OPERATOR_PVC_ROOT", "value": c.PVC_ROOT},
        {"name": "HOME", "value": "/tmp"},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
    ]
    env_from: list[dict[str, Any]] = []
    if store.type == "s3":
        if store.endpoint:
            # The default endpoint for s3:// inputs; not a credential.
            env.append({"name": "AWS_ENDPOINT_URL", "value": store.endpoint})
        env.append({"name": "AWS_DEFAULT_REGION", "value": store.region})
        env.append({"name": "AWS_EC2_METADATA_DISABLED", "value": "true"})
    if spec.model.credentials_secret:
        # The user's keys, renamed (MODEL_SOURCE_AWS_ACCESS_KEY_ID, ...): they read the model
        # and data URIs and can't steer where the artifact is published.
        env_from.append({"prefix": SOURCE_PREFIX, "secretRef": {"name": spec.model.credentials_secret}})

    container: dict[str, Any] = {
        "name": "worker",
        "image": config.worker_image,
        "imagePullPolicy": config.image_pull_policy,
        "command": ["model-operator", "optimize"],
        "args": [
            "--spec-json", spec_json,
            "--name", name,
            "--output", output,
            "--report-summary", TERMINATION_LOG,
            "--progress-port", str(PROGRESS_PORT),
            *publish_args,
        ],
        # The operator reads where the run is from here (status.optimization.progress).
        "ports": [{"name": "progress", "containerPort": PROGRESS_PORT, "protocol": "TCP"}],
        "env": env,
        "resources": c.merge_resources(config.worker_resources),
        "volumeMounts": mounts,
        "securityContext": c.container_security_context(),
        "terminationMessagePath": TERMINATION_LOG,
        "terminationMessagePolicy": "File",
    }
    if env_from:
        container["envFrom"] = env_from

    placement = None
    measured = measurement_pool(spec, config)
    if measured is not None:
        pool_name, pool = measured
        gpu = uses_gpu(spec, pool)
        placement = (pool_selector(pool, gpus=gpu), pool.tolerations)
        if gpu:  # one GPU: the fp16 candidates and the latency step run on it
            for part in ("requests", "limits"):
                container["resources"].setdefault(part, {})["nvidia.com/gpu"] = "1"
        # Where the latency step ran goes into the report (status.optimization.measuredOn).
        env += [{"name": "MODEL_OPERATOR_POOL", "value": pool_name}]
    env.append({"name": "MODEL_OPERATOR_NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}})

    pod_spec = c.worker_pod_spec(container, volumes, config, placement)

    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": c.job_name(name, digest),
            "namespace": namespace,
            "labels": labels,
            "annotations": {f"{c.DOMAIN}/output": output},
        },
        "spec": {
            "backoffLimit": config.job_backoff_limit,
            # Bad input (exit 2) and a rejected quality gate (exit 3) give the same answer on
            # every retry: the Job fails at once. A crash (1) or an eviction is retried.
            "podFailurePolicy": {"rules": [
                {"action": "FailJob", "onExitCodes": {"containerName": "worker", "operator": "In", "values": list(DETERMINISTIC_EXIT_CODES)}},
                {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
            ]},
            "activeDeadlineSeconds": spec.optimization.time_budget_seconds,
            "ttlSecondsAfterFinished": config.job_ttl_seconds,
            "template": {"metadata": {"labels": labels}, "spec": pod_spec},
        },
    }

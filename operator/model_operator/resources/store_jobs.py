"""Small Jobs on the worker image: the finalizer's artifact cleanup and the golden-set probe."""

from __future__ import annotations

import json
from typing import Any

from ..config import OperatorConfig
from . import access as a
from . import common as c


def build_cleanup_job(name: str, namespace: str, config: OperatorConfig) -> dict[str, Any]:
    """PVC stores only: the operator mounts no claim, so a Job deletes the MD's directory. S3
    stores are cleaned by the operator itself, with its own keys (controller/finalize.py)."""
    root = config.artifact_store.root_uri(namespace, name)
    return _store_job(
        name, namespace, config, component="cleanup", job_name=c.truncate(name, "-cleanup"),
        command=["model-operator", "artifacts", "delete"], args=["--uri", root], writable=True,
        deadline=300, backoff=3,
    )


def build_probe_job(
    name: str, namespace: str, config: OperatorConfig, *, artifact_uri: str, endpoints: list[str], samples: int, gate: dict[str, Any], revision: str
) -> dict[str, Any]:
    """Sends the artifact's golden samples to each ready Triton pod and reports agreement."""
    volumes, mounts, fetch_args = a.read_access(name, namespace, config.artifact_store, artifact_uri)
    return _store_job(
        name, namespace, config, component="probe", job_name=c.truncate(name, "-probe"),
        command=["model-operator", "probe"], store_volumes=(volumes, mounts),
        args=[*fetch_args,
            "--artifact", artifact_uri,
            "--model", name,
            "--endpoints", ",".join(endpoints),
            "--samples", str(samples),
            "--gate-json", json.dumps(gate, sort_keys=True),
            "--report-summary", "/dev/termination-log",
        ],
        writable=False, deadline=120, backoff=0, extra_labels={c.LABEL_REVISION: revision},
    )


def _store_job(
    name: str,
    namespace: str,
    config: OperatorConfig,
    *,
    component: str,
    job_name: str,
    command: list[str],
    args: list[str],
    writable: bool,
    deadline: int,
    backoff: int,
    extra_labels: dict[str, str] | None = None,
    store_volumes: tuple[list[dict[str, Any]], list[dict[str, Any]]] | None = None,
) -> dict[str, Any]:
    store = config.artifact_store
    root = store.root_uri(namespace, name)
    labels = {**c.base_labels(name, component), **(extra_labels or {})}
    if store_volumes is not None:
        volumes, mounts = list(store_volumes[0]), list(store_volumes[1])
    else:
        claims = c.claims_in_uris([root])
        volumes, mounts = c.claim_volumes(claims, read_only_except=store.claim if store.type == "pvc" and writable else None)
    volumes.append({"name": "tmp", "emptyDir": {}})
    mounts.append({"name": "tmp", "mountPath": "/tmp"})
    env: list[dict[str, Any]] = [{"name": "MODEL_OPERATOR_PVC_ROOT", "value": c.PVC_ROOT}, {"name": "HOME", "value": "/tmp"}]
    container: dict[str, Any] = {
        "name": component,
        "image": config.worker_image,
        "imagePullPolicy": config.image_pull_policy,
        "command": command,
        "args": args,
        "env": env,
        "volumeMounts": mounts,
        "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"memory": "256Mi"}},
        "securityContext": c.container_security_context(),
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    pod_spec = c.worker_pod_spec(container, volumes, config)
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": job_name, "namespace": namespace, "labels": labels},
        "spec": {
            "backoffLimit": backoff,
            "activeDeadlineSeconds": deadline,
            "ttlSecondsAfterFinished": 600,
            "template": {"metadata": {"labels": labels}, "spec": pod_spec},
        },
    }

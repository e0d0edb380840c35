"""Small Jobs on the worker image: the finalizer's artifact cleanup."""

from __future__ import annotations

from typing import Any

from ..config import OperatorConfig
from . import common as c


def build_cleanup_job(name: str, namespace: str, config: OperatorConfig) -> dict[str, Any]:
    """PVC stores only: the operator mounts no claim, so a Job empties the MD's directory, which
    is all it mounts (the kubelet made that directory and keeps it: an empty directory stays).
    S3 stores are cleaned by the operator itself, with its own keys (controller/finalize.py)."""
    store = config.artifact_store
    root = store.root_uri(namespace, name)
    volume, mount = c.own_subpath_volume(store.claim, namespace, name, read_only=False)
    return _store_job(
        name, namespace, config, component="cleanup", job_name=c.truncate(name, "-cleanup"),
        command=["model-operator", "artifacts", "delete"], args=["--uri", root, "--keep-root"],
        store_volumes=([volume], [mount]), deadline=300, backoff=3,
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
    deadline: int,
    backoff: int,
    store_volumes: tuple[list[dict[str, Any]], list[dict[str, Any]]],
    extra_labels: dict[str, str] | None = None,
) -> dict[str, Any]:
    labels = {**c.base_labels(name, component), **(extra_labels or {})}
    volumes, mounts = list(store_volumes[0]), list(store_volumes[1])
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

"""The cleanup Job the finalizer runs: deletes one ModelDeployment's artifact prefix."""

from __future__ import annotations

from typing import Any

from ..config import OperatorConfig
from . import common as c


def build_cleanup_job(name: str, namespace: str, config: OperatorConfig) -> dict[str, Any]:
    store = config.artifact_store
    root = store.root_uri(namespace, name)
    labels = c.base_labels(name, "cleanup")
    claims = c.claims_in_uris([root])
    volumes, mounts = c.claim_volumes(claims, read_only_except=store.claim if store.type == "pvc" else None)
    volumes.append({"name": "tmp", "emptyDir": {}})
    mounts.append({"name": "tmp", "mountPath": "/tmp"})
    env: list[dict[str, Any]] = [{"name": "MODEL_OPERATOR_PVC_ROOT", "value": c.PVC_ROOT}, {"name": "HOME", "value": "/tmp"}]
    if store.type == "s3" and store.endpoint:
        env.append({"name": "AWS_ENDPOINT_URL", "value": store.endpoint})
    container: dict[str, Any] = {
        "name": "cleanup",
        "image": config.worker_image,
        "imagePullPolicy": config.image_pull_policy,
        "command": ["model-operator", "artifacts", "delete"],
        "args": ["--uri", root],
        "env": env,
        "volumeMounts": mounts,
        "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"memory": "256Mi"}},
        "securityContext": c.container_security_context(),
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if store.secret:
        container["envFrom"] = [{"secretRef": {"name": store.secret}}]
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "containers": [container],
        "volumes": volumes,
        "securityContext": c.pod_security_context(config),
        "automountServiceAccountToken": False,
    }
    if config.worker_node_selector:
        pod_spec["nodeSelector"] = dict(config.worker_node_selector)
    if config.worker_tolerations:
        pod_spec["tolerations"] = [dict(t) for t in config.worker_tolerations]
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": c.truncate(name, "-cleanup"), "namespace": namespace, "labels": labels},
        "spec": {
            "backoffLimit": 3,
            "activeDeadlineSeconds": 300,
            "ttlSecondsAfterFinished": 600,
            "template": {"metadata": {"labels": labels}, "spec": pod_spec},
        },
    }

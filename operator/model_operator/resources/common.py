"""Names, labels and pod-level pieces every builder shares. Pure: no Kubernetes client here."""

from __future__ import annotations

import copy
from typing import Any, Final

from ..api.types import GROUP
from ..config import OperatorConfig

# The API group is the label and annotation domain too: one name, defined in api/types.py.
DOMAIN: Final = GROUP
LABEL_DEPLOYMENT: Final = f"{DOMAIN}/deployment"
LABEL_TRACK: Final = f"{DOMAIN}/track"
LABEL_REVISION: Final = f"{DOMAIN}/revision"
LABEL_COMPONENT: Final = "app.kubernetes.io/component"
# Which operator release runs a ModelDeployment (config.shard); its children carry it too, so
# each release's watches select only its own share of the fleet on the server.
LABEL_SHARD: Final = f"{DOMAIN}/shard"
ANNOTATION_SHA256: Final = f"{DOMAIN}/artifact-sha256"
MANAGED_BY: Final = {"app.kubernetes.io/managed-by": "model-operator"}

HTTP_PORT: Final = 8000
GRPC_PORT: Final = 8001
METRICS_PORT: Final = 8002
# The OpenAI-compatible front beside Triton in a generation model's pods (model.task: generation).
OPENAI_PORT: Final = 9000
# The golden-set probe container's metrics (resources/serving.probe_container).
PROBE_METRICS_PORT: Final = 9091
PROBE_METRICS_PORT_NAME: Final = "probe-metrics"
PVC_ROOT: Final = "/mnt/pvc"
MAX_NAME: Final = 63


def truncate(name: str, suffix: str) -> str:
    """Deterministic child names that fit the 63-character label limit."""
    room = MAX_NAME - len(suffix)
    return f"{name[:room].rstrip('-')}{suffix}"


def job_name(md_name: str, spec_hash: str) -> str:
    return truncate(md_name, f"-opt-{spec_hash}")


def deployment_name(md_name: str, track: str = "stable") -> str:
    return truncate(md_name, "-triton" if track == "stable" else "-triton-canary")


def service_name(md_name: str) -> str:
    return truncate(md_name, "-triton")


def shard_selector(shard: str) -> str:
    """The label selector of one shard: its label value, or for the unnamed shard no label at all."""
    return f"{LABEL_SHARD}={shard}" if shard else f"!{LABEL_SHARD}"


def with_shard(obj: dict[str, Any], md_labels: dict[str, str]) -> dict[str, Any]:
    """Copy the ModelDeployment's shard label onto a child and the pods its template makes (the
    pod watch is filtered by it too). A ModelDeployment without the label leaves it unchanged."""
    shard = md_labels.get(LABEL_SHARD)
    if not shard:
        return obj
    obj["metadata"].setdefault("labels", {})[LABEL_SHARD] = shard
    template = (obj.get("spec") or {}).get("template")
    if isinstance(template, dict):
        template.setdefault("metadata", {}).setdefault("labels", {})[LABEL_SHARD] = shard
    return obj


def base_labels(md_name: str, component: str) -> dict[str, str]:
    return {
        **MANAGED_BY,
        "app.kubernetes.io/name": "model-operator",
        "app.kubernetes.io/instance": md_name[:MAX_NAME],
        LABEL_COMPONENT: component,
        LABEL_DEPLOYMENT: md_name[:MAX_NAME],
    }


def serving_selector(md_name: str) -> dict[str, str]:
    """Selects every Triton pod of a ModelDeployment, stable and canary alike."""
    return {LABEL_DEPLOYMENT: md_name[:MAX_NAME], LABEL_COMPONENT: "triton"}


def selector_string(selector: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(selector.items()))


def pod_security_context(config: OperatorConfig) -> dict[str, Any]:
    sec = config.security
    return {
        "runAsNonRoot": True,
        "runAsUser": sec.run_as_user,
        "runAsGroup": sec.run_as_group,
        "fsGroup": sec.fs_group,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_security_context() -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def claims_in_uris(uris: list[str | None]) -> list[str]:
    """PersistentVolumeClaims that pvc:// URIs name, in first-seen order."""
    claims: list[str] = []
    for uri in uris:
        if uri and uri.startswith("pvc://"):
            claim = uri[len("pvc://") :].split("/", 1)[0]
            if claim and claim not in claims:
                claims.append(claim)
    return claims


def claim_volumes(claims: list[str]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Volumes and mounts that put each claim, read-only, at /mnt/pvc/<claim>, where pods resolve pvc:// URIs."""
    volumes, mounts = [], []
    for i, claim in enumerate(claims):
        vol = f"pvc-{i}"
        volumes.append({"name": vol, "persistentVolumeClaim": {"claimName": claim, "readOnly": True}})
        mounts.append({"name": vol, "mountPath": f"{PVC_ROOT}/{claim}", "readOnly": True})
    return volumes, mounts


def own_subpath_volume(claim: str, namespace: str, md_name: str, read_only: bool = True) -> tuple[dict[str, Any], dict[str, Any]]:
    """The store claim mounted at only this ModelDeployment's directory (`<namespace>/<name>`),
    where pvc://<claim>/<namespace>/<name>/... resolves: the pod sees no other tenant's artifacts."""
    sub = f"{namespace}/{md_name}"
    volume = {"name": "store", "persistentVolumeClaim": {"claimName": claim, "readOnly": read_only}}
    mount = {"name": "store", "mountPath": f"{PVC_ROOT}/{claim}/{sub}", "subPath": sub, "readOnly": read_only}
    return volume, mount


def merge_resources(*layers: dict[str, dict[str, str]] | None) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    for layer in layers:
        for section, values in (layer or {}).items():
            if values:
                out.setdefault(section, {}).update(values)
    return copy.deepcopy(out)


def worker_pod_spec(
    container: dict[str, Any], volumes: list[dict[str, Any]], config: OperatorConfig,
    placement: tuple[dict[str, str], list[dict[str, Any]]] | None = None,
) -> dict[str, Any]:
    """A run-once pod on the worker image, placed where the configuration puts worker Jobs, or
    by `placement` (node selector, tolerations) on a node pool."""
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "containers": [container],
        "volumes": volumes,
        "securityContext": pod_security_context(config),
        "automountServiceAccountToken": False,
    }
    selector, tolerations = placement or (config.worker_node_selector, config.worker_tolerations)
    if selector:
        pod_spec["nodeSelector"] = dict(selector)
    if tolerations:
        pod_spec["tolerations"] = [dict(t) for t in tolerations]
    if config.worker_service_account:
        pod_spec["serviceAccountName"] = config.worker_service_account
    return pod_spec

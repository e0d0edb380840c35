"""Triton serving objects: Deployment (stable or canary track), Service, PodDisruptionBudget,
ServiceMonitor. Pure functions of the spec, the artifact and the operator configuration."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ..api.types import ModelDeploymentSpec, Serving, Target
from ..api.validation import SpecError
from ..config import NodePool, OperatorConfig
from . import access as a
from . import common as c


class PoolError(SpecError):
    """The spec names a node pool the operator's configuration doesn't have."""


@dataclass(frozen=True)
class ArtifactRef:
    """The packaged artifact a track serves: where it is, what it must hash to, which spec made it."""

    uri: str
    sha256: str
    revision: str


def resolve_pool(spec: ModelDeploymentSpec, config: OperatorConfig) -> tuple[str | None, NodePool]:
    serving = spec.serving or Serving()
    name = serving.node_pool or config.default_node_pool.get(spec.target.value)
    if name is None:
        return None, NodePool()
    pool = config.node_pools.get(name)
    if pool is None:
        if serving.node_pool:
            known = ", ".join(sorted(config.node_pools)) or "none configured"
            raise PoolError("serving.nodePool", f"unknown node pool {name!r} (known: {known})")
        return None, NodePool()
    return name, pool


def pool_selector(pool: NodePool, gpus: bool) -> dict[str, str]:
    """The node selector of a pool: its labels, its architecture, and its GPU model for pods that use GPUs."""
    selector = dict(pool.node_selector)
    if pool.gpu_product and gpus:
        selector["nvidia.com/gpu.product"] = pool.gpu_product
    if pool.arch:
        selector["kubernetes.io/arch"] = pool.arch
    return selector


def _triton_resources(serving: Serving, pool: NodePool, target: Target) -> dict[str, dict[str, str]]:
    resources = c.merge_resources(pool.resources, serving.resources.model_dump())
    if serving.gpus and target == Target.cloud:
        resources.setdefault("limits", {})["nvidia.com/gpu"] = str(serving.gpus)
        resources.setdefault("requests", {})["nvidia.com/gpu"] = str(serving.gpus)
    return resources


def triton_args(config: OperatorConfig) -> list[str]:
    return [
        "--model-repository=/models",
        "--strict-readiness=true",
        "--model-control-mode=none",
        "--exit-on-error=true",
        f"--http-port={c.HTTP_PORT}",
        f"--grpc-port={c.GRPC_PORT}",
        f"--metrics-port={c.METRICS_PORT}",
        "--allow-metrics=true",
        # Latency quantiles (nv_inference_request_summary_us) for monitoring.p99LatencyMs and the
        # canary's maxLatencyRatio; Triton exports none by default.
        "--metrics-config=summary_latencies=true",
        *config.triton_args,
    ]


def drain_lifecycle(config: OperatorConfig) -> dict[str, Any]:
    """A preStop sleep for the containers that answer the Service. A removed pod leaves the
    Service's EndpointSlices at once, but kube-proxy on every node and clients holding
    connections learn it a moment later; a server that stops at once in that moment refuses their
    requests. The kubelet's own sleep action needs no shell in the image."""
    if not config.drain_seconds:
        return {}
    return {"lifecycle": {"preStop": {"sleep": {"seconds": config.drain_seconds}}}}


def is_generation(spec: ModelDeploymentSpec) -> bool:
    return bool(spec.model.task.value == "generation")


def openai_container(name: str, config: OperatorConfig) -> dict[str, Any]:
    """The OpenAI-compatible front (`model-operator openai`, triton/openai_api.py) beside Triton in
    a generation model's pod: it translates /v1/completions and /v1/chat/completions to the local
    Triton's generate_stream, so every replica serves the whole API on its own. It runs on the
    worker image, which the pod's init container has already pulled."""
    probe = {"httpGet": {"path": "/health", "port": "openai"}, "periodSeconds": 5, "timeoutSeconds": 3}
    return {
        "name": "openai",
        "image": config.worker_image,
        "imagePullPolicy": config.image_pull_policy,
        "command": ["model-operator", "openai"],
        "args": ["--triton", f"http://127.0.0.1:{c.HTTP_PORT}", "--model", name, "--host", "0.0.0.0", "--port", str(c.OPENAI_PORT)],
        "ports": [{"name": "openai", "containerPort": c.OPENAI_PORT, "protocol": "TCP"}],
        "env": [{"name": "HOME", "value": "/tmp"}],
        "readinessProbe": {**probe, "failureThreshold": 3},
        "livenessProbe": {**probe, "failureThreshold": 6},
        **drain_lifecycle(config),
        "resources": {"requests": {"cpu": "50m", "memory": "96Mi"}, "limits": {"memory": "512Mi"}},
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
        "securityContext": c.container_security_context(),
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }


def probes_quality(spec: ModelDeploymentSpec) -> bool:
    """Whether the pods run the golden-set probe container: a generation artifact has no golden
    tensors (its quality is the gate's, measured on held-out text)."""
    return spec.monitoring.golden_probe.enabled and not is_generation(spec)


GOLDEN_DIR = "/golden"


def probe_container(name: str, spec: ModelDeploymentSpec, config: OperatorConfig, *, revision: str, track: str) -> dict[str, Any]:
    """The golden-set probe beside Triton (`model-operator probe`, triton/pod_commands.probe_main):
    every goldenProbe.intervalSeconds it sends the golden samples the init container copied out of
    the artifact to the pod's own Triton and exports the verdict on its metrics port. No store
    access, no API access: it reads a file and talks to localhost. Light: one Python process that
    imports numpy and the Triton HTTP client, idle between probes."""
    golden = spec.monitoring.golden_probe
    gate = spec.optimization.quality_gate.model_dump(mode="json", by_alias=True, exclude_none=True)
    return {
        "name": "probe",
        "image": config.worker_image,
        "imagePullPolicy": config.image_pull_policy,
        "command": ["model-operator", "probe"],
        "args": [
            "--model", name,
            "--golden", f"{GOLDEN_DIR}/golden.npz",
            "--triton", f"127.0.0.1:{c.HTTP_PORT}",
            "--interval", str(golden.interval_seconds),
            "--samples", str(golden.samples),
            "--gate-json", json.dumps(gate, sort_keys=True),
            "--revision", revision,
            "--track", track,
            "--port", str(c.PROBE_METRICS_PORT),
        ],
        "ports": [{"name": c.PROBE_METRICS_PORT_NAME, "containerPort": c.PROBE_METRICS_PORT, "protocol": "TCP"}],
        "env": [{"name": "HOME", "value": "/tmp"}],
        "resources": {"requests": {"cpu": "10m", "memory": "96Mi"}, "limits": {"memory": "384Mi"}},
        "volumeMounts": [{"name": "golden", "mountPath": GOLDEN_DIR, "readOnly": True}, {"name": "tmp", "mountPath": "/tmp"}],
        "securityContext": c.container_security_context(),
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }


def build_deployment(
    name: str,
    namespace: str,
    spec: ModelDeploymentSpec,
    config: OperatorConfig,
    artifact: ArtifactRef,
    *,
    track: str = "stable",
    replicas: int,
) -> dict[str, Any]:
    serving = spec.serving or Serving()
    _, pool = resolve_pool(spec, config)
    selector = {**c.serving_selector(name), c.LABEL_TRACK: track}
    labels = {**c.base_labels(name, "triton"), c.LABEL_TRACK: track}
    pod_labels = {**labels, c.LABEL_REVISION: artifact.revision}
    # Without replicas: an autoscaler's scale change must not change the pod template, which
    # would roll every serving pod on each scale step.
    serving_json = json.dumps(serving.model_dump(mode="json", by_alias=True, exclude_none=True, exclude={"replicas"}), sort_keys=True)

    volumes, claim_mounts, fetch_args = a.read_access(name, namespace, config.artifact_store, artifact.uri)
    volumes += [{"name": "models", "emptyDir": {}}, {"name": "tmp", "emptyDir": {}}]
    probing = probes_quality(spec)
    golden_args: list[str] = []
    golden_mounts: list[dict[str, Any]] = []
    if probing:
        volumes.append({"name": "golden", "emptyDir": {"sizeLimit": "256Mi"}})
        golden_args = ["--golden-output", GOLDEN_DIR]
        golden_mounts = [{"name": "golden", "mountPath": GOLDEN_DIR}]
    store_env = [{"name": "MODEL_OPERATOR_PVC_ROOT", "value": c.PVC_ROOT}, {"name": "HOME", "value": "/tmp"}]

    # The init container copies the artifact into the pod, refuses it unless its digest matches
    # the report's, and writes config.pbtxt for the current serving block, so serving changes
    # never need a new optimization run.
    assemble: dict[str, Any] = {
        "name": "assemble",
        "image": config.worker_image,
        "imagePullPolicy": config.image_pull_policy,
        "command": ["model-operator", "assemble"],
        "args": [
            "--artifact", artifact.uri,
            "--sha256", artifact.sha256,
            "--name", name,
            "--target", spec.target.value,
            "--serving-json", serving_json,
            "--output", "/models",
            *golden_args,
            *fetch_args,
        ],
        "env": store_env,
        "volumeMounts": [*claim_mounts, {"name": "models", "mountPath": "/models"}, {"name": "tmp", "mountPath": "/tmp"}, *golden_mounts],
        "securityContext": c.container_security_context(),
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }

    probe_common = {"periodSeconds": 5, "timeoutSeconds": 3}
    triton: dict[str, Any] = {
        "name": "triton",
        "image": serving.triton_image or config.triton_image,
        "imagePullPolicy": config.image_pull_policy,
        "command": ["tritonserver"],
        "args": triton_args(config),
        "ports": [
            {"name": "http", "containerPort": c.HTTP_PORT, "protocol": "TCP"},
            {"name": "grpc", "containerPort": c.GRPC_PORT, "protocol": "TCP"},
            {"name": "metrics", "containerPort": c.METRICS_PORT, "protocol": "TCP"},
        ],
        "env": [{"name": "HOME", "value": "/tmp"}],
        "readinessProbe": {"httpGet": {"path": "/v2/health/ready", "port": "http"}, "failureThreshold": 3, **probe_common},
        "livenessProbe": {"httpGet": {"path": "/v2/health/live", "port": "http"}, "failureThreshold": 6, **probe_common},
        "startupProbe": {"httpGet": {"path": "/v2/health/live", "port": "http"}, "failureThreshold": 60, "periodSeconds": 2},
        **drain_lifecycle(config),
        "resources": _triton_resources(serving, pool, spec.target),
        "volumeMounts": [{"name": "models", "mountPath": "/models", "readOnly": True}, {"name": "tmp", "mountPath": "/tmp"}],
        "securityContext": c.container_security_context(),
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }

    node_selector = pool_selector(pool, gpus=bool(serving.gpus))
    pod_spec: dict[str, Any] = {
        "initContainers": [assemble],
        "containers": [triton, openai_container(name, config)] if is_generation(spec) else [triton],
        "volumes": volumes,
        "securityContext": c.pod_security_context(config),
        "automountServiceAccountToken": False,
        # The grace period covers the drain pause plus Triton's own shutdown of in-flight requests.
        "terminationGracePeriodSeconds": 30 + config.drain_seconds,
    }
    if probing:
        pod_spec["containers"].append(probe_container(name, spec, config, revision=artifact.revision, track=track))
    if node_selector:
        pod_spec["nodeSelector"] = node_selector
    if pool.tolerations:
        pod_spec["tolerations"] = [dict(t) for t in pool.tolerations]
    if config.triton_service_account:
        pod_spec["serviceAccountName"] = config.triton_service_account

    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": c.deployment_name(name, track),
            "namespace": namespace,
            "labels": labels,
            "annotations": {c.ANNOTATION_SHA256: artifact.sha256, f"{c.DOMAIN}/artifact": artifact.uri},
        },
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": selector},
            # Surge first, never take a serving pod down before its replacement is Ready.
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "progressDeadlineSeconds": config.progress_deadline_seconds,
            "revisionHistoryLimit": 3,
            "template": {
                "metadata": {
                    "labels": pod_labels,
                    "annotations": {
                        "prometheus.io/scrape": "true",
                        "prometheus.io/port": str(c.METRICS_PORT),
                        "prometheus.io/path": "/metrics",
                        c.ANNOTATION_SHA256: artifact.sha256,
                    },
                },
                "spec": pod_spec,
            },
        },
    }


def build_service(name: str, namespace: str, openai: bool = False, probe: bool = False) -> dict[str, Any]:
    """Triton's ports, the OpenAI-compatible front's for a generation model, and the golden-set
    probe's metrics port when the pods run it (the ServiceMonitor scrapes it through this Service)."""
    ports = [
        {"name": "http", "port": c.HTTP_PORT, "targetPort": "http", "protocol": "TCP"},
        {"name": "grpc", "port": c.GRPC_PORT, "targetPort": "grpc", "protocol": "TCP"},
        {"name": "metrics", "port": c.METRICS_PORT, "targetPort": "metrics", "protocol": "TCP"},
    ]
    if openai:
        ports.append({"name": "openai", "port": c.OPENAI_PORT, "targetPort": "openai", "protocol": "TCP"})
    if probe:
        ports.append({"name": c.PROBE_METRICS_PORT_NAME, "port": c.PROBE_METRICS_PORT, "targetPort": c.PROBE_METRICS_PORT_NAME, "protocol": "TCP"})
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": c.service_name(name), "namespace": namespace, "labels": c.base_labels(name, "triton")},
        "spec": {
            "type": "ClusterIP",
            "selector": c.serving_selector(name),
            "ports": ports,
        },
    }


def build_pdb(name: str, namespace: str, replicas: int) -> dict[str, Any] | None:
    """One pod may be disrupted at a time, and only when there is more than one."""
    if replicas <= 1:
        return None
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": {"name": c.truncate(name, "-triton"), "namespace": namespace, "labels": c.base_labels(name, "triton")},
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": c.serving_selector(name)}},
    }


def build_service_monitor(name: str, namespace: str, interval_seconds: int = 15, probe: bool = False) -> dict[str, Any]:
    """Triton's metrics, and the golden-set probe's when the pods run it."""
    endpoints = [{"port": "metrics", "path": "/metrics", "interval": f"{interval_seconds}s"}]
    if probe:
        endpoints.append({"port": c.PROBE_METRICS_PORT_NAME, "path": "/metrics", "interval": f"{interval_seconds}s"})
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "metadata": {"name": c.truncate(name, "-triton"), "namespace": namespace, "labels": c.base_labels(name, "triton")},
        "spec": {
            "selector": {"matchLabels": c.base_labels(name, "triton")},
            "endpoints": endpoints,
        },
    }


def endpoint(name: str, namespace: str, openai: bool = False) -> dict[str, str]:
    host = f"{c.service_name(name)}.{namespace}.svc"
    out = {
        "http": f"http://{host}:{c.HTTP_PORT}",
        "grpc": f"{host}:{c.GRPC_PORT}",
        "metrics": f"http://{host}:{c.METRICS_PORT}/metrics",
        "modelName": name,
    }
    if openai:
        out["openai"] = f"http://{host}:{c.OPENAI_PORT}/v1"
    return out

"""Autoscaler objects for clusters that run their own engine: a KEDA ScaledObject with
Prometheus triggers using the same PromQL as the built-in scaler, or an autoscaling/v2 HPA.
Both target the ModelDeployment's scale subresource, so the operator stays the one that
turns spec.serving.replicas into Deployments (and canary splits)."""

from __future__ import annotations

from typing import Any

from ..api import types as t
from ..api.types import Autoscaling, ScalingMetricType
from ..scaling import promql
from . import common as c


def _target_ref(name: str) -> dict[str, str]:
    return {"apiVersion": t.API_VERSION, "kind": t.KIND, "name": name}


def _behavior(spec: Autoscaling) -> dict[str, Any]:
    def rules(r: t.ScalingRules, select: str) -> dict[str, Any]:
        return {
            "stabilizationWindowSeconds": r.stabilization_seconds,
            "selectPolicy": select,
            "policies": [
                {"type": "Percent", "value": r.max_percent, "periodSeconds": r.period_seconds},
                {"type": "Pods", "value": r.max_pods, "periodSeconds": r.period_seconds},
            ],
        }

    return {"scaleUp": rules(spec.scale_up, "Max"), "scaleDown": rules(spec.scale_down, "Max")}


def build_keda_scaled_object(name: str, namespace: str, spec: Autoscaling, prometheus_url: str, window: str = "1m") -> dict[str, Any]:
    sel = promql.pod_matcher(name, namespace, track=None)
    triggers = []
    for metric in spec.metrics:
        query = promql.scaling_query(metric.type, sel, window)
        per_replica = metric.type != ScalingMetricType.queue_time
        triggers.append({
            "type": "prometheus",
            "name": metric.type.value,
            "metricType": "AverageValue" if per_replica else "Value",
            "metadata": {"serverAddress": prometheus_url, "query": query, "threshold": f"{metric.target:g}"},
        })
    return {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": {"name": c.truncate(name, "-triton"), "namespace": namespace, "labels": c.base_labels(name, "autoscaler")},
        "spec": {
            "scaleTargetRef": _target_ref(name),
            "minReplicaCount": spec.min_replicas,
            "maxReplicaCount": spec.max_replicas,
            "pollingInterval": spec.poll_seconds,
            "advanced": {"horizontalPodAutoscalerConfig": {"behavior": _behavior(spec)}},
            "triggers": triggers,
        },
    }


def build_hpa(name: str, namespace: str, spec: Autoscaling) -> dict[str, Any]:
    """An HPA on the ModelDeployment's scale subresource. CPU utilisation maps to the resource
    metric; Triton metrics need a Prometheus adapter serving them as pod metrics under these names."""
    metrics: list[dict[str, Any]] = []
    for metric in spec.metrics:
        if metric.type == ScalingMetricType.cpu_utilization:
            metrics.append({"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": int(metric.target)}}})
        else:
            metrics.append({
                "type": "Pods",
                "pods": {
                    "metric": {"name": f"triton_{metric.type.value}"},
                    "target": {"type": "AverageValue", "averageValue": f"{metric.target:g}"},
                },
            })
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": c.truncate(name, "-triton"), "namespace": namespace, "labels": c.base_labels(name, "autoscaler")},
        "spec": {
            "scaleTargetRef": _target_ref(name),
            "minReplicas": max(spec.min_replicas, 1),
            "maxReplicas": spec.max_replicas,
            "metrics": metrics,
            "behavior": _behavior(spec),
        },
    }

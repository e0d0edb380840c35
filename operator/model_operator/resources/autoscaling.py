"""Autoscaler objects for clusters that run their own engine: a KEDA ScaledObject with
Prometheus triggers using the same PromQL as the built-in scaler, or an autoscaling/v2 HPA.
Both target the ModelDeployment's scale subresource, so the operator stays the one that
turns spec.serving.replicas into Deployments (and canary splits)."""

from __future__ import annotations

from typing import Any

from ..api import types as t
from ..api.types import Autoscaling, ScalingEngine
from ..scaling import adapter, promql
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
    """Every trigger's query already answers per replica (an average over the pods, or a time per
    request), so each is a `Value` metric: the HPA then wants ceil(replicas * value / threshold),
    the built-in scaler's rule. `AverageValue` would divide the query's answer by the replica count
    once more (ceil(value / threshold)): 3 replicas at 10 req/s each, threshold 5, would give 2."""
    sel = promql.pod_matcher(name, namespace, track=None)
    triggers = []
    for metric in spec.metrics:
        query = promql.scaling_query(metric.type, sel, window)
        triggers.append({
            "type": "prometheus",
            "name": metric.type.value,
            "metricType": "Value",
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
    metric; Triton metrics are Pods metrics a Prometheus adapter serves under these names, with
    the rules scaling/adapter.adapter_rules gives (the chart's prometheus-adapter rules)."""
    metrics: list[dict[str, Any]] = []
    for metric in spec.metrics:
        if not adapter.served(metric.type):
            metrics.append({"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": int(metric.target)}}})
        else:
            metrics.append({
                "type": "Pods",
                "pods": {
                    "metric": {"name": adapter.hpa_metric_name(metric.type)},
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


KEDA_API = ("keda.sh/v1alpha1", "ScaledObject")
HPA_API = ("autoscaling/v2", "HorizontalPodAutoscaler")


def autoscaler_name(name: str) -> str:
    return c.truncate(name, "-triton")


def desired_autoscaler(
    name: str, namespace: str, spec: t.ModelDeploymentSpec, prometheus_url: str, window: str, keda_served: bool
) -> tuple[dict[str, Any] | None, tuple[str, str, str]]:
    """The engine object this spec wants (None: none), and the ScalingActive condition as
    (status, reason, message). The built-in engine needs no object; `keda` on a cluster without
    KEDA's CRD gets none and says so, rather than failing the whole reconcile."""
    auto = spec.autoscaling
    if auto is None or not auto.enabled or spec.target == t.Target.device:
        return None, ("False", "Disabled", "autoscaling is off: replicas follow spec.serving.replicas")
    if auto.engine == ScalingEngine.operator:
        return None, ("True", "OperatorScaler", "the operator's scaler sets replicas from Prometheus metrics")
    if auto.engine == ScalingEngine.hpa:
        return build_hpa(name, namespace, auto), (
            "True", "HorizontalPodAutoscaler", f"replicas follow HorizontalPodAutoscaler {autoscaler_name(name)}")
    if not keda_served:
        return None, ("False", "KEDANotInstalled",
                      "autoscaling.engine is keda, but the cluster does not serve keda.sh/v1alpha1 ScaledObject: "
                      "install KEDA, or set autoscaling.engine to operator or hpa")
    return build_keda_scaled_object(name, namespace, auto, prometheus_url, window), (
        "True", "KEDA", f"replicas follow KEDA ScaledObject {autoscaler_name(name)}")

"""The scaling-engine part of the plan: the HPA or KEDA ScaledObject the spec's engine wants,
deleting one it no longer wants, ScalingActive, and status.scaling for the external engines
(the built-in scaler writes its own)."""

from __future__ import annotations

from typing import Any

from ..api.types import ModelDeploymentSpec, ScalingEngine, Serving
from ..config import OperatorConfig
from ..resources import autoscaling as autoscaling_builder
from .core import Draft


def plan_engine(d: Draft, spec: ModelDeploymentSpec, config: OperatorConfig) -> dict[str, Any] | None:
    auto = spec.autoscaling
    engine = auto.engine if auto is not None and auto.enabled else None
    keda = engine == ScalingEngine.keda and autoscaling_builder.KEDA_API in d.observed.served
    obj, (value, reason, message) = autoscaling_builder.desired_autoscaler(
        d.name, d.namespace, spec, config.prometheus_url, config.prometheus_window, keda)
    d.cond("ScalingActive", value, reason, message)
    if reason == "KEDANotInstalled" and d.old_condition("ScalingActive").get("reason") != reason:
        d.event("Warning", reason, message)
    obj_name = autoscaling_builder.autoscaler_name(d.name)
    for api_version, kind in (autoscaling_builder.HPA_API, autoscaling_builder.KEDA_API):
        if obj is not None and obj["kind"] == kind:
            d.want_existing(obj, optional=True)
        else:
            d.drop_if_present([(api_version, kind)], obj_name)
    if obj is None or engine is None:
        return None
    return _scaling_status(d, spec, engine, obj_name, message)


def _scaling_status(d: Draft, spec: ModelDeploymentSpec, engine: ScalingEngine, obj_name: str, message: str) -> dict[str, Any]:
    old = dict(d.old_status.get("scaling") or {})
    hpa = d.mine("HorizontalPodAutoscaler", obj_name) or {}
    desired = (hpa.get("status") or {}).get("desiredReplicas")
    scaling = {
        "engine": engine.value,
        "desired": int(desired) if desired is not None else (spec.serving or Serving()).replicas,
        "reason": message,
        "history": old.get("history") or [],
    }
    if old.get("lastScaleTime"):
        scaling["lastScaleTime"] = old["lastScaleTime"]
    return scaling

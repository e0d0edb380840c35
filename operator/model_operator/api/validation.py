"""Cross-field rules, enforced outside the API server too (worker, `local`, the operator).

They mirror the CEL rules of the CRD (see types._SPEC_RULES) so a spec that never passed
through an API server (a file given to `model-operator local up`) fails the same way.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from .types import (
    Backend,
    ClippingMethod,
    ConversionFormat,
    ModelDeploymentSpec,
    ModelFormat,
    PruningMethod,
    QuantizationMode,
    Target,
)


class SpecError(ValueError):
    """A spec that cannot work as written. `field` is the dotted path of the offending field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"spec.{field}: {message}")
        self.field = field
        self.message = message


def check_rules(spec: ModelDeploymentSpec) -> None:
    opt = spec.optimization
    if spec.autoscaling and spec.autoscaling.min_replicas > spec.autoscaling.max_replicas:
        raise SpecError("autoscaling.minReplicas", "must be <= autoscaling.maxReplicas")
    if opt.quantization.mode == QuantizationMode.static_int8 and spec.data.calibration is None:
        raise SpecError("optimization.quantization.mode", "static-int8 quantization needs calibration data: set data.calibration")
    if opt.pruning.method == PruningMethod.gradient and spec.data.calibration is None:
        raise SpecError("optimization.pruning.method", "gradient pruning needs calibration data: set data.calibration")
    if spec.target == Target.device and (spec.serving is not None or spec.autoscaling is not None):
        raise SpecError("target", "target: device serves nothing: remove the serving and autoscaling blocks")
    if opt.clipping.method == ClippingMethod.threshold and opt.clipping.threshold is None:
        raise SpecError("optimization.clipping.threshold", "threshold clipping needs optimization.clipping.threshold")
    if opt.clipping.method == ClippingMethod.percentile and opt.clipping.percentile is None:
        raise SpecError("optimization.clipping.percentile", "percentile clipping needs optimization.clipping.percentile")
    if spec.serving and spec.serving.gpus and spec.target != Target.cloud:
        raise SpecError("serving.gpus", "serving.gpus is only for target: cloud")
    conversion = spec.conversion.format
    if conversion == ConversionFormat.torchscript and spec.model.format == ModelFormat.onnx:
        raise SpecError("conversion.format", "an ONNX model cannot be converted to TorchScript: set conversion.format: onnx")
    backend = spec.serving.backend if spec.serving else None
    if backend in (Backend.onnxruntime, Backend.python) and conversion == ConversionFormat.torchscript:
        raise SpecError("serving.backend", f"backend {backend.value} serves ONNX files, but conversion.format is torchscript: "
                        "set conversion.format: onnx, or serving.backend: pytorch")
    if backend == Backend.pytorch and conversion == ConversionFormat.onnx:
        raise SpecError("serving.backend", "backend pytorch serves TorchScript files, but conversion.format is onnx: "
                        "set conversion.format: torchscript, or serving.backend: onnxruntime")


def _field_path(loc: tuple[Any, ...]) -> str:
    parts: list[str] = []
    for p in loc:
        if isinstance(p, int):
            parts.append(f"[{p}]")
        else:
            parts.append(("." if parts else "") + str(p))
    return "".join(parts)


def load_spec(spec: dict[str, Any]) -> ModelDeploymentSpec:
    """Parse and check a spec dict; every failure is a SpecError naming the field."""
    if not isinstance(spec, dict):
        raise SpecError("", "spec must be a mapping")
    try:
        parsed = ModelDeploymentSpec.model_validate(spec)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise SpecError(_field_path(tuple(err["loc"])), err["msg"]) from None
    check_rules(parsed)
    return parsed

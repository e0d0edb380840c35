from __future__ import annotations

import copy
from typing import Any

import pytest

from model_operator.api.hashing import spec_hash
from model_operator.api.validation import SpecError, load_spec

BASE: dict[str, Any] = {
    "model": {"uri": "s3://models/digits.onnx", "format": "onnx"},
    "serving": {"replicas": 2, "maxBatchSize": 16},
    "autoscaling": {"minReplicas": 1, "maxReplicas": 4},
}


def with_(patch: dict[str, Any], base: dict[str, Any] | None = None) -> dict[str, Any]:
    out = copy.deepcopy(base if base is not None else BASE)
    for dotted, value in patch.items():
        node = out
        keys = dotted.split(".")
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        if value is ...:
            node.pop(keys[-1], None)
        else:
            node[keys[-1]] = value
    return out


def test_defaults_fill_in() -> None:
    spec = load_spec(BASE)
    assert spec.optimization.quantization.mode.value == "none"
    assert spec.autoscaling is not None and spec.autoscaling.scale_down.stabilization_seconds == 300
    assert spec.autoscaling.scale_up.stabilization_seconds == 0
    assert spec.serving is not None and spec.serving.dynamic_batching.enabled


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"autoscaling.minReplicas": 5}, "autoscaling.minReplicas"),
        ({"optimization.quantization.mode": "static-int8"}, "optimization.quantization.mode"),
        ({"optimization.pruning.method": "gradient"}, "optimization.pruning.method"),
        ({"target": "device"}, "target"),
        ({"optimization.clipping.method": "threshold"}, "optimization.clipping.threshold"),
        ({"optimization.clipping.method": "percentile"}, "optimization.clipping.percentile"),
        ({"target": "edge", "serving.gpus": 1}, "serving.gpus"),
        ({"optimization.quantization.mode": "int4"}, "optimization.quantization.mode"),
        ({"serving.replicas": -1}, "serving.replicas"),
        ({"serving.maxBatchSize": "lots"}, "serving.maxBatchSize"),
        ({"model.uri": "has spaces in it"}, "model.uri"),
        ({"model": ...}, "model"),
        ({"serving.unknownField": 1}, "serving.unknownField"),
        ({"optimization.pruning.sparsity": 0.99}, "optimization.pruning.sparsity"),
        # Serving choices that can never load the artifact are refused before any Job runs.
        ({"model.format": "torchscript", "conversion.format": "torchscript", "serving.backend": "python"}, "serving.backend"),
        ({"serving.backend": "pytorch"}, "serving.backend"),
        ({"model.format": "onnx", "conversion.format": "torchscript"}, "conversion.format"),
    ],
)
def test_bad_specs_name_the_field(patch: dict[str, Any], field: str) -> None:
    with pytest.raises(SpecError) as info:
        load_spec(with_(patch))
    assert info.value.field == field
    assert str(info.value).startswith(f"spec.{field}: ")


def test_static_int8_with_calibration_passes() -> None:
    spec = load_spec(with_({"optimization.quantization.mode": "static-int8", "data.calibration": {"uri": "s3://d/cal.npz"}}))
    assert spec.data.calibration is not None


def test_device_target_without_serving_passes() -> None:
    base = {"model": {"uri": "s3://m/x.onnx"}, "target": "device"}
    assert load_spec(base).target.value == "device"


def test_spec_hash_ignores_serving_only_fields() -> None:
    h = spec_hash(load_spec(BASE))
    assert spec_hash(load_spec(with_({"serving.replicas": 7, "serving.maxBatchSize": 4}))) == h
    assert spec_hash(load_spec(with_({"autoscaling.maxReplicas": 9}))) == h
    assert spec_hash(load_spec(with_({"optimization.timeBudgetSeconds": 60}))) == h
    assert spec_hash(load_spec(with_({"optimization.quantization.mode": "dynamic-int8"}))) != h
    assert spec_hash(load_spec(with_({"serving.backend": "python"}))) != h
    assert len(h) == 10

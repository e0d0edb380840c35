"""Property-based tests of the spec parser: whatever a user writes, the answer is a parsed spec
or a SpecError naming a field, never another exception."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hs

from model_operator.api.hashing import spec_hash
from model_operator.api.validation import SpecError, load_spec

KEYS = [
    "model", "uri", "format", "task", "inputs", "outputs", "name", "dtype", "shape", "credentialsSecret",
    "target", "data", "calibration", "validation", "samples", "optimization", "quantization", "mode",
    "scope", "perChannel", "sensitiveLayers", "auto", "count", "names", "clipping", "method", "threshold",
    "percentile", "pruning", "sparsity", "search", "enabled", "candidates", "qualityGate", "maxTop1Drop",
    "conversion", "opset", "serving", "replicas", "nodePool", "gpus", "maxBatchSize", "autoscaling",
    "minReplicas", "maxReplicas", "metrics", "type", "rollout", "strategy", "canary", "weight",
]
ENUMS = ["onnx", "torchscript", "static-int8", "dynamic-int8", "fp16", "none", "device", "edge", "cloud",
         "percentile", "threshold", "gradient", "magnitude", "canary", "queueTime", "float32", "int64"]

scalars = hs.one_of(
    hs.none(), hs.booleans(), hs.integers(-5, 10**6), hs.floats(allow_nan=True, allow_infinity=True),
    hs.sampled_from(ENUMS), hs.text(max_size=20), hs.just("s3://bucket/model.onnx"),
)
values = hs.recursive(
    scalars,
    lambda inner: hs.one_of(hs.lists(inner, max_size=4), hs.dictionaries(hs.sampled_from(KEYS), inner, max_size=6)),
    max_leaves=30,
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(hs.dictionaries(hs.sampled_from(KEYS), values, max_size=8))
def test_random_specs_parse_or_name_a_field(spec: dict[str, Any]) -> None:
    try:
        parsed = load_spec(spec)
    except SpecError as exc:
        assert str(exc).startswith("spec.")
        return
    assert len(spec_hash(parsed)) == 10


@settings(max_examples=200, deadline=None)
@given(
    mode=hs.sampled_from(["none", "dynamic-int8", "static-int8", "fp16"]),
    minr=hs.integers(0, 20),
    maxr=hs.integers(1, 20),
    target=hs.sampled_from(["cloud", "edge", "device"]),
    with_serving=hs.booleans(),
)
def test_cross_field_rules_are_consistent(mode: str, minr: int, maxr: int, target: str, with_serving: bool) -> None:
    spec: dict[str, Any] = {"model": {"uri": "s3://b/m.onnx"}, "target": target, "optimization": {"quantization": {"mode": mode}}}
    if with_serving:
        spec["serving"] = {"replicas": 1}
        spec["autoscaling"] = {"minReplicas": minr, "maxReplicas": maxr}
    try:
        load_spec(spec)
        ok = True
    except SpecError:
        ok = False
    expected = mode != "static-int8" and not (target == "device" and with_serving) and not (with_serving and minr > maxr)
    assert ok == expected

"""A corpus of malformed ModelDeployments applied to the real API server: each is rejected by
the CRD's schema or CEL rules with a message that names the offending field."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

pytestmark = pytest.mark.e2e

GOOD: dict[str, Any] = {
    "apiVersion": "serving.model-operator.io/v1alpha1",
    "kind": "ModelDeployment",
    "metadata": {"name": "good"},
    "spec": {
        "model": {"uri": "s3://models/digits.onnx", "format": "onnx"},
        "serving": {"replicas": 1},
        "autoscaling": {"minReplicas": 1, "maxReplicas": 3},
    },
}


def _set(doc: dict[str, Any], dotted: str, value: Any) -> None:
    node = doc
    keys = dotted.split(".")
    for k in keys[:-1]:
        node = node.setdefault(k, {})
    if value is ...:
        node.pop(keys[-1], None)
    else:
        node[keys[-1]] = value


# (id, {dotted path: value (... deletes)}, substring the API server's message must contain)
CORPUS: list[tuple[str, dict[str, Any], str]] = [
    ("missing-spec", {"spec": ...}, "spec"),
    ("missing-model", {"spec.model": ...}, "spec.model"),
    ("missing-uri", {"spec.model.uri": ...}, "spec.model.uri"),
    ("uri-not-string", {"spec.model.uri": 42}, "spec.model.uri"),
    ("uri-empty", {"spec.model.uri": ""}, "spec.model.uri"),
    ("uri-file-scheme", {"spec.model.uri": "file:///etc/passwd"}, "spec.model.uri"),
    ("uri-plain-path", {"spec.model.uri": "/models/m.onnx"}, "spec.model.uri"),
    ("uri-ftp", {"spec.model.uri": "ftp://host/m.onnx"}, "spec.model.uri"),
    ("uri-pvc-traversal", {"spec.model.uri": "pvc://models/../../etc/shadow"}, "spec.model.uri"),
    ("uri-pvc-trailing-dotdot", {"spec.model.uri": "pvc://models/a/.."}, "spec.model.uri"),
    ("uri-spaces", {"spec.model.uri": "s3://bucket/my model.onnx"}, "spec.model.uri"),
    ("uri-too-long", {"spec.model.uri": "s3://bucket/" + "a" * 2100}, "spec.model.uri"),
    ("calibration-traversal", {"spec.data": {"calibration": {"uri": "pvc://data/../x.npz"}}}, "spec.data.calibration.uri"),
    ("format-unknown", {"spec.model.format": "tensorflow"}, "spec.model.format"),
    ("task-unknown", {"spec.model.task": "segmentation"}, "spec.model.task"),
    ("dtype-unknown", {"spec.model.inputs": [{"name": "x", "dtype": "complex128", "shape": [-1, 3]}]}, "spec.model.inputs[0].dtype"),
    ("shape-below-minus-one", {"spec.model.inputs": [{"name": "x", "shape": [-2, 3]}]}, "spec.model.inputs[0].shape[0]"),
    ("shape-empty", {"spec.model.inputs": [{"name": "x", "shape": []}]}, "spec.model.inputs[0].shape"),
    ("input-name-bad", {"spec.model.inputs": [{"name": "1 bad", "shape": [-1]}]}, "spec.model.inputs[0].name"),
    ("secret-name-bad", {"spec.model.credentialsSecret": "Not_A_Name"}, "spec.model.credentialsSecret"),
    # Cross-namespace references are refused: a Secret is named, never namespace/name.
    ("secret-cross-namespace", {"spec.model.credentialsSecret": "team-b/creds"}, "spec.model.credentialsSecret"),
    ("target-unknown", {"spec.target": "mainframe"}, "spec.target"),
    ("quant-mode-unknown", {"spec.optimization": {"quantization": {"mode": "int4"}}}, "spec.optimization.quantization.mode"),
    ("quant-scope-unknown", {"spec.optimization": {"quantization": {"scope": "some"}}}, "spec.optimization.quantization.scope"),
    ("static-without-calibration", {"spec.optimization": {"quantization": {"mode": "static-int8"}}}, "static-int8 quantization needs calibration data"),
    ("gradient-without-calibration", {"spec.optimization": {"pruning": {"method": "gradient"}}}, "gradient pruning needs calibration data"),
    ("sparsity-too-high", {"spec.optimization": {"pruning": {"sparsity": 0.99}}}, "spec.optimization.pruning.sparsity"),
    ("sparsity-negative", {"spec.optimization": {"pruning": {"sparsity": -0.1}}}, "spec.optimization.pruning.sparsity"),
    ("pruning-method-unknown", {"spec.optimization": {"pruning": {"method": "random"}}}, "spec.optimization.pruning.method"),
    ("clip-threshold-missing", {"spec.optimization": {"clipping": {"method": "threshold"}}}, "threshold clipping needs optimization.clipping.threshold"),
    ("clip-percentile-missing", {"spec.optimization": {"clipping": {"method": "percentile"}}}, "percentile clipping needs"),
    ("clip-percentile-range", {"spec.optimization": {"clipping": {"method": "percentile", "percentile": 120}}}, "spec.optimization.clipping.percentile"),
    ("clip-threshold-zero", {"spec.optimization": {"clipping": {"method": "threshold", "threshold": 0}}}, "spec.optimization.clipping.threshold"),
    ("gate-top1-range", {"spec.optimization": {"qualityGate": {"maxTop1Drop": 2}}}, "spec.optimization.qualityGate.maxTop1Drop"),
    ("gate-cosine-type", {"spec.optimization": {"qualityGate": {"minCosine": "high"}}}, "spec.optimization.qualityGate.minCosine"),
    ("time-budget-low", {"spec.optimization": {"timeBudgetSeconds": 1}}, "spec.optimization.timeBudgetSeconds"),
    ("search-too-many", {"spec.optimization": {"search": {"maxCandidates": 100}}}, "spec.optimization.search.maxCandidates"),
    ("opset-old", {"spec.conversion": {"opset": 7}}, "spec.conversion.opset"),
    ("conversion-format-unknown", {"spec.conversion": {"format": "tflite"}}, "spec.conversion.format"),
    ("replicas-negative", {"spec.serving.replicas": -1}, "spec.serving.replicas"),
    ("replicas-string", {"spec.serving.replicas": "three"}, "spec.serving.replicas"),
    ("replicas-huge", {"spec.serving.replicas": 100000}, "spec.serving.replicas"),
    ("batch-too-big", {"spec.serving.maxBatchSize": 10**7}, "spec.serving.maxBatchSize"),
    ("backend-unknown", {"spec.serving.backend": "tensorflow"}, "spec.serving.backend"),
    ("quantity-bad", {"spec.serving.resources": {"limits": {"memory": "lots"}}}, "spec.serving.resources.limits.memory"),
    ("gpus-on-edge", {"spec.target": "edge", "spec.serving.gpus": 1}, "serving.gpus is only for target: cloud"),
    ("device-with-serving", {"spec.target": "device"}, "target: device serves nothing"),
    ("min-above-max", {"spec.autoscaling": {"minReplicas": 5, "maxReplicas": 2}}, "autoscaling.minReplicas must be <= autoscaling.maxReplicas"),
    ("engine-unknown", {"spec.autoscaling": {"engine": "magic"}}, "spec.autoscaling.engine"),
    ("metric-unknown", {"spec.autoscaling": {"metrics": [{"type": "vibes", "target": 1}]}}, "spec.autoscaling.metrics[0].type"),
    ("metric-target-zero", {"spec.autoscaling": {"metrics": [{"type": "queueTime", "target": 0}]}}, "spec.autoscaling.metrics[0].target"),
    ("stabilization-too-long", {"spec.autoscaling": {"scaleDown": {"stabilizationSeconds": 999999}}}, "spec.autoscaling.scaleDown.stabilizationSeconds"),
    ("strategy-unknown", {"spec.rollout": {"strategy": "bluegreen"}}, "spec.rollout.strategy"),
    ("canary-weight-100", {"spec.rollout": {"canary": {"weight": 100}}}, "spec.rollout.canary.weight"),
    ("canary-latency-ratio-low", {"spec.rollout": {"canary": {"maxLatencyRatio": 0.5}}}, "spec.rollout.canary.maxLatencyRatio"),
    ("probe-interval-low", {"spec.monitoring": {"goldenProbe": {"intervalSeconds": 1}}}, "spec.monitoring.goldenProbe.intervalSeconds"),
    ("name-too-long", {"metadata.name": "m" * 64}, "metadata.name"),
    ("name-uppercase", {"metadata.name": "Digits"}, "metadata.name"),
]


def test_corpus_is_big_enough() -> None:
    assert len(CORPUS) >= 40
    assert len({c[0] for c in CORPUS}) == len(CORPUS)


@pytest.mark.parametrize(("case", "patch", "expected"), CORPUS, ids=[c[0] for c in CORPUS])
def test_api_server_rejects_with_field(crd_installed: Any, custom_api: Any, namespace: str, case: str, patch: dict[str, Any], expected: str) -> None:
    doc = copy.deepcopy(GOOD)
    doc["metadata"]["name"] = f"bad-{case}"[:63]
    for dotted, value in patch.items():
        _set(doc, dotted, value)
    with pytest.raises(ApiException) as info:
        custom_api.create_namespaced_custom_object("serving.model-operator.io", "v1alpha1", namespace, "modeldeployments", doc)
    assert info.value.status == 422, info.value.body
    message = json.loads(info.value.body)["message"]
    assert expected in message, f"{case}: {message}"


def test_good_object_is_accepted(crd_installed: Any, custom_api: Any, namespace: str) -> None:
    created = custom_api.create_namespaced_custom_object(
        "serving.model-operator.io", "v1alpha1", namespace, "modeldeployments", copy.deepcopy(GOOD)
    )
    # Defaults from the schema were applied by the API server.
    assert created["spec"]["target"] == "cloud"
    assert created["spec"]["serving"]["maxBatchSize"] == 8

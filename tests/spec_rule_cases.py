"""The shared table of specs for the cross-field rules (api/rules.py): each case is a spec and
the field the rule it breaks names (None: valid). tests/unit/test_spec_rules_table.py checks
the Python predicates against it; tests/e2e/test_spec_rules.py checks the CRD's CEL against it
on a real API server. Every rule has at least one case that breaks it and one that keeps it."""

from __future__ import annotations

import copy
from typing import Any

BASE: dict[str, Any] = {
    "model": {
        "uri": "s3://models/m.pt", "format": "torchscript",
        "inputs": [{"name": "input", "shape": [-1, 4]}], "outputs": [{"name": "logits", "shape": [-1, 2]}],
    },
    "data": {"validation": {"uri": "s3://models/v.npz"}},
    "serving": {"replicas": 1},
}


def spec(**edits: Any) -> dict[str, Any]:
    """BASE with dotted-path edits (`serving__gpus=1` sets spec.serving.gpus; None deletes)."""
    return _edited(copy.deepcopy(BASE), edits)


def _edited(out: dict[str, Any], edits: dict[str, Any]) -> dict[str, Any]:
    for dotted, value in edits.items():
        keys = dotted.split("__")
        node = out
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        if value is None:
            node.pop(keys[-1], None)
        else:
            node[keys[-1]] = value
    return out


CAL = {"uri": "s3://models/c.npz"}


def gen(**edits: Any) -> dict[str, Any]:
    """A decoder language model (model.task: generation): a Hugging Face checkpoint directory, held-out text."""
    base = spec(model={"uri": "s3://models/tiny-llama/", "format": "hf", "task": "generation"}, data__validation={"uri": "s3://models/held-out.txt"},
                target="device", serving=None)
    return _edited(base, edits)
# (id, spec, field of the broken rule or None)
CASES: list[tuple[str, dict[str, Any], str | None]] = [
    ("valid", spec(), None),
    ("autoscaling-min-above-max", spec(autoscaling={"minReplicas": 4, "maxReplicas": 2}), "autoscaling.minReplicas"),
    ("autoscaling-min-equals-max", spec(autoscaling={"minReplicas": 2, "maxReplicas": 2}), None),
    ("static-int8-without-calibration", spec(optimization={"quantization": {"mode": "static-int8"}}), "optimization.quantization.mode"),
    ("static-int8-with-calibration", spec(optimization={"quantization": {"mode": "static-int8"}}, data__calibration=CAL), None),
    ("partial-scope-mode-none", spec(optimization={"quantization": {"mode": "none", "scope": "partial"}}), "optimization.quantization.scope"),
    ("partial-scope-default-mode", spec(optimization={"quantization": {"scope": "partial"}}), "optimization.quantization.scope"),
    ("partial-scope-dynamic", spec(optimization={"quantization": {"mode": "dynamic-int8", "scope": "partial"}}), None),
    ("kept-int8-dynamic", spec(optimization={"quantization": {"mode": "dynamic-int8", "scope": "partial",
                                                               "sensitiveLayers": {"auto": True, "dtype": "int8"}}}),
     "optimization.quantization.sensitiveLayers.dtype"),
    ("kept-int8-default-mode", spec(optimization={"quantization": {"sensitiveLayers": {"dtype": "int8"}}}), "optimization.quantization.sensitiveLayers.dtype"),
    ("kept-int8-int4", spec(optimization={"quantization": {"mode": "int4-weight-only", "scope": "partial",
                                                            "sensitiveLayers": {"auto": True, "count": 12, "dtype": "int8"}}}), None),
    ("kept-float16-dynamic", spec(optimization={"quantization": {"mode": "dynamic-int8", "scope": "partial",
                                                                  "sensitiveLayers": {"auto": True, "dtype": "float16"}}}), None),
    ("gradient-pruning-without-calibration", spec(optimization={"pruning": {"method": "gradient"}}), "optimization.pruning.method"),
    ("gradient-pruning-with-calibration", spec(optimization={"pruning": {"method": "gradient"}}, data__calibration=CAL), None),
    ("device-with-serving", spec(target="device"), "target"),
    ("device-without-serving", spec(target="device", serving=None), None),
    ("threshold-clipping-without-threshold", spec(optimization={"clipping": {"method": "threshold"}}), "optimization.clipping.threshold"),
    ("threshold-clipping-with-threshold", spec(optimization={"clipping": {"method": "threshold", "threshold": 2.0}}), None),
    ("percentile-clipping-without-percentile", spec(optimization={"clipping": {"method": "percentile"}}), "optimization.clipping.percentile"),
    ("percentile-clipping-with-percentile", spec(optimization={"clipping": {"method": "percentile", "percentile": 99.9}}), None),
    ("gpus-on-edge", spec(target="edge", serving={"gpus": 1}), "serving.gpus"),
    ("gpus-on-cloud", spec(serving={"gpus": 1}), None),
    ("tensorrt-without-gpus", spec(serving={"gpuAccelerator": "tensorrt"}), "serving.gpuAccelerator"),
    ("tensorrt-with-gpus", spec(serving={"gpuAccelerator": "tensorrt", "gpus": 1}), None),
    ("preferred-batch-above-max", spec(serving={"maxBatchSize": 8, "dynamicBatching": {"preferredBatchSizes": [4, 16]}}),
     "serving.dynamicBatching.preferredBatchSizes"),
    ("preferred-batch-above-default-max", spec(serving={"dynamicBatching": {"preferredBatchSizes": [16]}}),
     "serving.dynamicBatching.preferredBatchSizes"),
    ("preferred-batch-within-max", spec(serving={"maxBatchSize": 16, "dynamicBatching": {"preferredBatchSizes": [4, 16]}}), None),
    ("output-named-like-an-input", spec(model__outputs=[{"name": "input", "shape": [-1, 2]}]), "model.outputs"),
    ("onnx-to-torchscript", spec(model__format="onnx", conversion={"format": "torchscript"}, serving={"backend": "pytorch"}), "conversion.format"),
    ("torchscript-to-torchscript", spec(conversion={"format": "torchscript"}, serving={"backend": "pytorch"}), None),
    ("onnxruntime-serving-torchscript", spec(conversion={"format": "torchscript"}, serving={"backend": "onnxruntime"}), "serving.backend"),
    ("python-serving-torchscript", spec(conversion={"format": "torchscript"}, serving={"backend": "python"}), "serving.backend"),
    ("pytorch-serving-onnx", spec(serving={"backend": "pytorch"}), "serving.backend"),
    ("onnxruntime-serving-onnx", spec(serving={"backend": "onnxruntime"}), None),
    ("pooling-on-a-classifier", spec(optimization={"qualityGate": {"pooling": "mean"}}), "optimization.qualityGate.pooling"),
    ("pooling-on-an-embedding", spec(model__task="embedding", optimization={"qualityGate": {"pooling": "mean"}}), None),
    ("pooling-none-on-a-classifier", spec(optimization={"qualityGate": {"pooling": "none"}}), None),
    ("mask-input-on-a-regression", spec(model__task="regression", optimization={"qualityGate": {"maskInput": "input"}}),
     "optimization.qualityGate.maskInput"),
    ("mask-input-on-an-embedding", spec(model__task="embedding", optimization={"qualityGate": {"maskInput": "input"}}), None),
    # generation (decoder language models)
    ("generation", gen(), None),
    ("generation-full", gen(generation={"maxContextTokens": 256, "maxNewTokens": 64, "eosToken": "<|endoftext|>",
                                        "sampling": {"temperature": 0, "topK": 40}}, optimization={"quantization": {"mode": "int4-weight-only"}}), None),
    ("generation-int8", gen(optimization={"quantization": {"mode": "int8-weight-only"}}), None),
    ("generation-from-onnx", gen(model__format="onnx"), "model.task"),
    ("generation-format-omitted", gen(model__format=None), "model.task"),
    ("hf-checkpoint-as-classifier", gen(model__task="classification"), "model.format"),
    ("generation-block-on-a-classifier", spec(generation={"maxNewTokens": 8}), "generation"),
    ("generation-block-on-a-device-classifier", spec(generation={"maxNewTokens": 8}, target="device", serving=None), "generation"),
    ("generation-new-tokens-fill-context", gen(generation={"maxContextTokens": 64, "maxNewTokens": 64}), "generation.maxNewTokens"),
    ("generation-new-tokens-without-context", gen(generation={"maxNewTokens": 4096}), None),
    ("generation-static-int8", gen(optimization={"quantization": {"mode": "static-int8"}}, data__calibration=CAL), "optimization.quantization.mode"),
    ("generation-fp16", gen(optimization={"quantization": {"mode": "fp16"}}), "optimization.quantization.mode"),
    ("int8-weight-only-on-a-classifier", spec(optimization={"quantization": {"mode": "int8-weight-only"}}), "optimization.quantization.mode"),
    ("generation-pruned", gen(optimization={"pruning": {"method": "magnitude"}}), "optimization.pruning.method"),
    ("generation-clipped", gen(optimization={"clipping": {"method": "threshold", "threshold": 1.0}}), "optimization.clipping.method"),
    ("generation-to-torchscript", gen(conversion={"format": "torchscript"}), "conversion.format"),
    ("token-metrics-on-a-classifier", spec(autoscaling={"metrics": [{"type": "queueTime", "target": 5}, {"type": "timeToFirstToken", "target": 200}]}),
     "autoscaling.metrics"),
    ("classic-metrics-on-a-classifier", spec(autoscaling={"metrics": [{"type": "pendingRequests", "target": 4}]}), None),
    ("generation-served-on-cloud", gen(target="cloud", serving={"replicas": 2}), None),
    ("generation-served-on-edge", gen(target="edge", serving={"replicas": 1}), None),
    ("generation-on-python-backend", gen(target="cloud", serving={"backend": "python"}), None),
    ("generation-on-onnxruntime-backend", gen(target="cloud", serving={"backend": "onnxruntime"}), "serving.backend"),
    ("generation-on-pytorch-backend", gen(target="cloud", serving={"backend": "pytorch"}), "serving.backend"),
    # a generation model batches nothing: Triton's batching settings are refused, their defaults (and 0) kept
    ("generation-max-batch-size", gen(target="cloud", serving={"maxBatchSize": 16}), "serving.maxBatchSize"),
    ("generation-max-batch-size-zero", gen(target="cloud", serving={"maxBatchSize": 0, "instanceCount": 2}), None),
    ("generation-max-batch-size-default", gen(target="cloud", serving={"maxBatchSize": 8}), None),
    ("generation-preferred-batch-sizes", gen(target="cloud", serving={"dynamicBatching": {"preferredBatchSizes": [2, 4]}}),
     "serving.dynamicBatching.preferredBatchSizes"),
    ("generation-batching-off", gen(target="cloud", serving={"dynamicBatching": {"enabled": False}}), None),
    ("generation-queue-delay", gen(target="cloud", serving={"dynamicBatching": {"maxQueueDelayMicroseconds": 5000}}),
     "serving.dynamicBatching.maxQueueDelayMicroseconds"),
    ("generation-autotune", gen(target="cloud", serving={"autotune": True}), "serving.autotune"),
    ("classifier-autotune", spec(serving={"autotune": True}), None),
    ("classifier-batching", spec(serving={"maxBatchSize": 32, "dynamicBatching": {"preferredBatchSizes": [8, 32], "maxQueueDelayMicroseconds": 5000}}),
     None),
]

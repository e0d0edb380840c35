"""The spec's cross-field rules, each written once: a CEL expression the generated CRD carries
(the API server enforces it) and a Python predicate `check()` enforces for specs that never pass
an API server (`model-operator local`, the worker). tests/e2e/test_spec_rules.py checks the two
agree on a shared table of specs (tests/spec_rule_cases.py) against a real API server.

CEL sees the object after the API server applied the schema's defaults, but guards every
optional field with has() all the same: a rule must hold for any object the schema admits.
Predicates take the parsed ModelDeploymentSpec (this module imports no types: api/types.py
imports it to build the CRD's x-kubernetes-validations)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .types import ModelDeploymentSpec


@dataclass(frozen=True)
class Rule:
    field: str  # the dotted path under spec the message is about
    message: str
    cel: str  # true when the spec is valid; `self` is the spec
    holds: Callable[[ModelDeploymentSpec], bool]

    def validation(self) -> dict[str, str]:
        """The CRD's x-kubernetes-validations entry."""
        return {"rule": self.cel, "message": self.message, "fieldPath": "." + self.field}


def _mode(s: ModelDeploymentSpec) -> str:
    return str(s.optimization.quantization.mode.value)


def _kept(s: ModelDeploymentSpec) -> str:
    d = s.optimization.quantization.sensitive_layers.dtype
    return "float32" if d is None else str(d.value)


def _pooling(s: ModelDeploymentSpec) -> str:
    p = s.optimization.quality_gate.pooling
    return "none" if p is None else str(p.value)


def _backend(s: ModelDeploymentSpec) -> str | None:
    return s.serving.backend.value if s.serving and s.serving.backend else None


_QUANT = "has(self.optimization) && has(self.optimization.quantization)"
_BACKEND = "has(self.serving) && has(self.serving.backend)"
_GATE = "has(self.optimization) && has(self.optimization.qualityGate)"
_EMBEDDING = "(has(self.model.task) && self.model.task == 'embedding')"
_CONVERSION_TS = "(has(self.conversion) && has(self.conversion.format) && self.conversion.format == 'torchscript')"
_GENERATION = "(has(self.model.task) && self.model.task == 'generation')"
_MODE = f"({_QUANT} && has(self.optimization.quantization.mode) ? self.optimization.quantization.mode : 'none')"
_GENERATION_MODES = ("none", "int8-weight-only", "int4-weight-only")
_TOKEN_METRICS = ("timeToFirstToken", "interTokenLatency", "tokensPerSecond", "requestsInFlight")
# Serving's defaults (api/types.py; a unit test checks they agree): the API server fills them in,
# so CEL can't tell "left out" from "set to the default" and a rule accepts both.
DEFAULT_MAX_BATCH_SIZE = 8
DEFAULT_MAX_QUEUE_DELAY_MICROSECONDS = 100
_SERVED_GENERATION = f"{_GENERATION} && has(self.serving)"
_NO_BATCHING = ("a generation model batches nothing (each request runs its own generator to its end; "
                "concurrent requests wait in Triton's queue for a model instance)")


def _generation(s: ModelDeploymentSpec) -> bool:
    return bool(s.model.task.value == "generation")


def _max_context(s: ModelDeploymentSpec) -> int | None:
    return s.generation.max_context_tokens if s.generation else None

RULES: tuple[Rule, ...] = (
    Rule("autoscaling.minReplicas", "autoscaling.minReplicas must be <= autoscaling.maxReplicas",
         "!has(self.autoscaling) || self.autoscaling.minReplicas <= self.autoscaling.maxReplicas",
         lambda s: s.autoscaling is None or s.autoscaling.min_replicas <= s.autoscaling.max_replicas),
    Rule("optimization.quantization.mode", "static-int8 quantization needs calibration data: set data.calibration",
         f"!({_QUANT} && has(self.optimization.quantization.mode) && self.optimization.quantization.mode == 'static-int8')"
         " || (has(self.data) && has(self.data.calibration))",
         lambda s: _mode(s) != "static-int8" or s.data.calibration is not None),
    Rule("optimization.quantization.scope",
         "scope: partial keeps sensitive layers unquantized, so it needs a quantization mode other than none",
         f"!({_QUANT} && has(self.optimization.quantization.scope) && self.optimization.quantization.scope == 'partial')"
         " || (has(self.optimization.quantization.mode) && self.optimization.quantization.mode != 'none')",
         lambda s: s.optimization.quantization.scope.value != "partial" or _mode(s) != "none"),
    Rule("optimization.quantization.sensitiveLayers.dtype",
         "sensitiveLayers.dtype: int8 keeps layers at 8 bits inside a 4-bit model: it needs quantization.mode: int4-weight-only",
         f"!({_QUANT} && has(self.optimization.quantization.sensitiveLayers)"
         " && has(self.optimization.quantization.sensitiveLayers.dtype) && self.optimization.quantization.sensitiveLayers.dtype == 'int8')"
         f" || {_MODE} == 'int4-weight-only'",
         lambda s: _kept(s) != "int8" or _mode(s) == "int4-weight-only"),
    Rule("optimization.pruning.method", "gradient pruning needs calibration data: set data.calibration",
         "!has(self.optimization) || !has(self.optimization.pruning) || !has(self.optimization.pruning.method)"
         " || self.optimization.pruning.method != 'gradient' || (has(self.data) && has(self.data.calibration))",
         lambda s: s.optimization.pruning.method.value != "gradient" or s.data.calibration is not None),
    Rule("target", "target: device serves nothing: remove the serving and autoscaling blocks",
         "!has(self.target) || self.target != 'device' || (!has(self.serving) && !has(self.autoscaling))",
         lambda s: s.target.value != "device" or (s.serving is None and s.autoscaling is None)),
    Rule("optimization.clipping.threshold", "threshold clipping needs optimization.clipping.threshold",
         "!has(self.optimization) || !has(self.optimization.clipping) || !has(self.optimization.clipping.method)"
         " || self.optimization.clipping.method != 'threshold' || has(self.optimization.clipping.threshold)",
         lambda s: s.optimization.clipping.method.value != "threshold" or s.optimization.clipping.threshold is not None),
    Rule("optimization.clipping.percentile", "percentile clipping needs optimization.clipping.percentile",
         "!has(self.optimization) || !has(self.optimization.clipping) || !has(self.optimization.clipping.method)"
         " || self.optimization.clipping.method != 'percentile' || has(self.optimization.clipping.percentile)",
         lambda s: s.optimization.clipping.method.value != "percentile" or s.optimization.clipping.percentile is not None),
    Rule("serving.gpus", "serving.gpus is only for target: cloud",
         "!has(self.serving) || !has(self.serving.gpus) || self.serving.gpus == 0 || !has(self.target) || self.target == 'cloud'",
         lambda s: not (s.serving and s.serving.gpus) or s.target.value == "cloud"),
    Rule("serving.gpuAccelerator", "gpuAccelerator: tensorrt runs on GPUs: set serving.gpus",
         "!has(self.serving) || !has(self.serving.gpuAccelerator) || self.serving.gpuAccelerator != 'tensorrt'"
         " || (has(self.serving.gpus) && self.serving.gpus > 0)",
         lambda s: s.serving is None or s.serving.gpu_accelerator.value != "tensorrt" or s.serving.gpus > 0),
    Rule("serving.dynamicBatching.preferredBatchSizes", "every preferred batch size must be <= serving.maxBatchSize",
         "!has(self.serving) || !has(self.serving.dynamicBatching) || !has(self.serving.dynamicBatching.preferredBatchSizes)"
         " || self.serving.dynamicBatching.preferredBatchSizes.all(b, b <= (has(self.serving.maxBatchSize) ? self.serving.maxBatchSize : 8))",
         lambda s: s.serving is None or all(b <= s.serving.max_batch_size for b in s.serving.dynamic_batching.preferred_batch_sizes)),
    Rule("model.outputs", "an output may not have the name of an input",
         "!has(self.model.inputs) || !has(self.model.outputs) || self.model.outputs.all(o, !self.model.inputs.exists(i, i.name == o.name))",
         lambda s: not ({t.name for t in s.model.inputs or []} & {t.name for t in s.model.outputs or []})),
    Rule("conversion.format", "an ONNX model cannot be converted to TorchScript: set conversion.format: onnx",
         f"!{_CONVERSION_TS} || !has(self.model.format) || self.model.format != 'onnx'",
         lambda s: s.conversion.format.value != "torchscript" or s.model.format is None or s.model.format.value != "onnx"),
    Rule("serving.backend", "backends onnxruntime and python serve ONNX files, but conversion.format is torchscript: "
                            "set conversion.format: onnx, or serving.backend: pytorch",
         f"!({_BACKEND} && (self.serving.backend == 'onnxruntime' || self.serving.backend == 'python')) || !{_CONVERSION_TS}",
         lambda s: _backend(s) not in ("onnxruntime", "python") or s.conversion.format.value != "torchscript"),
    Rule("serving.backend", "backend pytorch serves TorchScript files, but conversion.format is onnx: "
                            "set conversion.format: torchscript, or serving.backend: onnxruntime",
         f"!({_BACKEND} && self.serving.backend == 'pytorch') || {_CONVERSION_TS}",
         lambda s: _backend(s) != "pytorch" or s.conversion.format.value == "torchscript"),
    Rule("optimization.qualityGate.pooling", "qualityGate.pooling pools a token-level embedding: it needs model.task: embedding",
         f"!({_GATE} && has(self.optimization.qualityGate.pooling) && self.optimization.qualityGate.pooling != 'none') || {_EMBEDDING}",
         lambda s: _pooling(s) == "none" or s.model.task.value == "embedding"),
    Rule("optimization.qualityGate.maskInput", "qualityGate.maskInput leaves padding out of an embedding: it needs model.task: embedding",
         f"!({_GATE} && has(self.optimization.qualityGate.maskInput)) || {_EMBEDDING}",
         lambda s: s.optimization.quality_gate.mask_input is None or s.model.task.value == "embedding"),
    # Generation (decoder language models): a Hugging Face checkpoint, exported with a KV cache to ONNX, served streaming.
    Rule("model.task", "model.task: generation reads a Hugging Face decoder checkpoint: set model.format: hf",
         f"!{_GENERATION} || (has(self.model.format) && self.model.format == 'hf')",
         lambda s: not _generation(s) or (s.model.format is not None and s.model.format.value == "hf")),
    Rule("model.format", "model.format: hf is a decoder language model checkpoint: set model.task: generation",
         f"!has(self.model.format) || self.model.format != 'hf' || {_GENERATION}",
         lambda s: s.model.format is None or s.model.format.value != "hf" or _generation(s)),
    Rule("generation", "the generation block describes a decoder language model: set model.task: generation, or remove it",
         f"!has(self.generation) || {_GENERATION}",
         lambda s: s.generation is None or _generation(s)),
    Rule("generation.maxNewTokens", "generation.maxNewTokens must be < generation.maxContextTokens (the prompt needs room)",
         "!has(self.generation) || !has(self.generation.maxContextTokens) || !has(self.generation.maxNewTokens)"
         " || self.generation.maxNewTokens < self.generation.maxContextTokens",
         lambda s: _max_context(s) is None or s.generation is None or s.generation.max_new_tokens < (_max_context(s) or 0)),
    Rule("optimization.quantization.mode", "a generation model is quantized weight-only: mode none, int8-weight-only or int4-weight-only",
         f"!{_GENERATION} || {_MODE} in {list(_GENERATION_MODES)}",
         lambda s: not _generation(s) or _mode(s) in _GENERATION_MODES),
    Rule("optimization.quantization.mode", "int8-weight-only quantizes a decoder's MatMul weights: it needs model.task: generation (else use dynamic-int8)",
         f"{_MODE} != 'int8-weight-only' || {_GENERATION}",
         lambda s: _mode(s) != "int8-weight-only" or _generation(s)),
    Rule("optimization.pruning.method", "a generation model is not pruned: set optimization.pruning.method: none",
         f"!{_GENERATION} || !has(self.optimization) || !has(self.optimization.pruning) || !has(self.optimization.pruning.method)"
         " || self.optimization.pruning.method == 'none'",
         lambda s: not _generation(s) or s.optimization.pruning.method.value == "none"),
    Rule("optimization.clipping.method", "a generation model's weights are not clipped: set optimization.clipping.method: none",
         f"!{_GENERATION} || !has(self.optimization) || !has(self.optimization.clipping) || !has(self.optimization.clipping.method)"
         " || self.optimization.clipping.method == 'none'",
         lambda s: not _generation(s) or s.optimization.clipping.method.value == "none"),
    Rule("conversion.format", "a generation model is exported to ONNX with a KV cache: set conversion.format: onnx",
         f"!{_GENERATION} || !{_CONVERSION_TS}",
         lambda s: not _generation(s) or s.conversion.format.value != "torchscript"),
    Rule("autoscaling.metrics", "timeToFirstToken, interTokenLatency, tokensPerSecond and requestsInFlight are a generation model's metrics: "
                                "they need model.task: generation",
         f"!has(self.autoscaling) || !has(self.autoscaling.metrics) || {_GENERATION}"
         f" || !self.autoscaling.metrics.exists(m, m.type in {list(_TOKEN_METRICS)})",
         lambda s: s.autoscaling is None or _generation(s) or not any(m.type.value in _TOKEN_METRICS for m in s.autoscaling.metrics)),
    # Triton serves a generation model as a decoupled Python-backend model (triton/generation_model.py).
    Rule("serving.backend", "a generation model runs on Triton's Python backend (ONNX Runtime GenAI's loop): set serving.backend: python or leave it out",
         f"!{_GENERATION} || !({_BACKEND}) || self.serving.backend == 'python'",
         lambda s: not _generation(s) or s.serving is None or s.serving.backend is None or s.serving.backend.value == "python"),
    # ... which takes one request per model instance at a time: Triton's batching settings don't apply to it.
    Rule("serving.maxBatchSize", f"{_NO_BATCHING}: leave serving.maxBatchSize out (or 0)",
         f"!({_SERVED_GENERATION}) || !has(self.serving.maxBatchSize) || self.serving.maxBatchSize in [0, {DEFAULT_MAX_BATCH_SIZE}]",
         lambda s: not _generation(s) or s.serving is None or s.serving.max_batch_size in (0, DEFAULT_MAX_BATCH_SIZE)),
    Rule("serving.dynamicBatching.preferredBatchSizes", f"{_NO_BATCHING}: remove serving.dynamicBatching.preferredBatchSizes",
         f"!({_SERVED_GENERATION}) || !has(self.serving.dynamicBatching) || !has(self.serving.dynamicBatching.preferredBatchSizes)"
         " || size(self.serving.dynamicBatching.preferredBatchSizes) == 0",
         lambda s: not _generation(s) or s.serving is None or not s.serving.dynamic_batching.preferred_batch_sizes),
    Rule("serving.dynamicBatching.maxQueueDelayMicroseconds", f"{_NO_BATCHING}: leave serving.dynamicBatching.maxQueueDelayMicroseconds out",
         f"!({_SERVED_GENERATION}) || !has(self.serving.dynamicBatching) || !has(self.serving.dynamicBatching.maxQueueDelayMicroseconds)"
         f" || self.serving.dynamicBatching.maxQueueDelayMicroseconds == {DEFAULT_MAX_QUEUE_DELAY_MICROSECONDS}",
         lambda s: not _generation(s) or s.serving is None
         or s.serving.dynamic_batching.max_queue_delay_microseconds == DEFAULT_MAX_QUEUE_DELAY_MICROSECONDS),
    Rule("serving.autotune", "serving.autotune sweeps batch sizes and queue delays with batched inference requests, which a generation model "
                             "(decoupled, streaming) does not take: remove serving.autotune and set serving.instanceCount",
         f"!({_SERVED_GENERATION}) || !has(self.serving.autotune) || !self.serving.autotune",
         lambda s: not _generation(s) or s.serving is None or not s.serving.autotune),
)


def broken(spec: ModelDeploymentSpec) -> list[Rule]:
    return [r for r in RULES if not r.holds(spec)]


def cel_validations() -> list[dict[str, Any]]:
    return [r.validation() for r in RULES]

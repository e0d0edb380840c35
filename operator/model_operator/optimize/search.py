"""Candidate recipes: the spec's own optimization as one plan, or a search over several.

A Plan is a fully resolved recipe (quantization, clipping, pruning, graph optimization level).
`builtin_candidates` derives a search space from the spec's base optimization (variants of the
quantization family the spec asks for, so a search never trades away the size the spec wants);
`choose` picks the fastest candidate that passed the gate, preferring the smaller artifact
among candidates whose latencies are within LATENCY_TIE of the fastest (measurement noise).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from ..api.types import (
    Clipping,
    ClippingMethod,
    ConversionFormat,
    Optimization,
    Pruning,
    PruningMethod,
    Quantization,
    QuantizationMode,
    QuantizationScope,
    Recipe,
    SensitiveLayers,
)
from .errors import InputError

LATENCY_TIE: Final = 0.05
DEFAULT_LEVEL: Final = "all"
PRUNE_VARIANT_SPARSITY: Final = 0.3


@dataclass(frozen=True)
class Plan:
    name: str
    quantization: Quantization
    clipping: Clipping
    pruning: Pruning
    graph_level: str = DEFAULT_LEVEL

    def transform_key(self) -> str:
        """Plans with the same key share the clipped/pruned/exported float model."""
        return json.dumps([self.clipping.model_dump(mode="json"), self.pruning.model_dump(mode="json")], sort_keys=True)

    def identity(self) -> str:
        q = self.quantization.model_dump(mode="json")
        return json.dumps([q, self.transform_key(), self.graph_level], sort_keys=True)

    def describe(self) -> dict[str, Any]:
        q = self.quantization
        out: dict[str, Any] = {"quantization": QuantizationMode(q.mode).value, "graphOptimizationLevel": self.graph_level}
        if q.mode != QuantizationMode.none:
            if q.mode != QuantizationMode.fp16:
                out["perChannel"] = q.per_channel
            out["scope"] = QuantizationScope(q.scope).value
            if q.op_types:
                out["opTypes"] = list(q.op_types)
            if q.scope == QuantizationScope.partial:
                sl = q.sensitive_layers
                out["sensitiveLayers"] = {"auto": sl.auto, "count": sl.count, "names": list(sl.names)}
        if self.clipping.method != ClippingMethod.none:
            out["clipping"] = self.clipping.model_dump(mode="json", by_alias=True, exclude_none=True)
        if self.pruning.method != PruningMethod.none:
            out["pruning"] = self.pruning.model_dump(mode="json", by_alias=True)
        return out


def plan_name(q: Quantization, clipping: Clipping, pruning: Pruning, level: str = DEFAULT_LEVEL) -> str:
    """A readable, stable name: `dynamic-int8`, `static-int8-per-tensor-partial`, `fp32+magnitude-30`..."""
    mode = QuantizationMode(q.mode)
    parts = ["fp32" if mode == QuantizationMode.none else mode.value]
    if mode in (QuantizationMode.dynamic_int8, QuantizationMode.static_int8):
        if not q.per_channel:
            parts.append("per-tensor")
        if q.op_types:
            parts.append("-".join(t.lower() for t in q.op_types))
    if mode != QuantizationMode.none and q.scope == QuantizationScope.partial:
        parts.append("partial-auto" if q.sensitive_layers.auto else "partial")
    name = "-".join(parts)
    if clipping.method == ClippingMethod.threshold:
        name += f"+clip-{clipping.threshold:g}"
    elif clipping.method == ClippingMethod.percentile:
        name += f"+clip-p{clipping.percentile:g}"
    if pruning.method != PruningMethod.none:
        name += f"+{PruningMethod(pruning.method).value}-{round(pruning.sparsity * 100)}"
    if level != DEFAULT_LEVEL:
        name += f"@{level}"
    return name[:63]


def resolve(base: Optimization, recipe: Recipe | None = None) -> Plan:
    q = recipe.quantization if recipe and recipe.quantization else base.quantization
    c = recipe.clipping if recipe and recipe.clipping else base.clipping
    p = recipe.pruning if recipe and recipe.pruning else base.pruning
    level = recipe.graph_optimization_level if recipe and recipe.graph_optimization_level else DEFAULT_LEVEL
    name = recipe.name if recipe else plan_name(q, c, p, level)
    return Plan(name=name, quantization=q, clipping=c, pruning=p, graph_level=level)


def _q(mode: QuantizationMode, *, per_channel: bool = True, op_types: list[str] | None = None, auto: int | None = None) -> Quantization:
    q = Quantization(mode=mode, per_channel=per_channel, op_types=op_types)
    if auto:
        q = Quantization(mode=mode, per_channel=per_channel, op_types=op_types, scope=QuantizationScope.partial,
                         sensitive_layers=SensitiveLayers(auto=True, count=auto))
    return q


def builtin_candidates(
    base: Optimization,
    *,
    has_calibration: bool,
    torch_source: bool,
    conversion: ConversionFormat,
    max_candidates: int,
) -> list[Plan]:
    """The search space when `spec.optimization.search.candidates` is omitted. The spec's own
    recipe comes first; duplicates are dropped; at most `max_candidates` plans."""
    first = resolve(base)
    c, p = first.clipping, first.pruning
    mode = QuantizationMode(base.quantization.mode)
    plans: list[Plan] = [first]

    def add(q: Quantization, *, pruning: Pruning | None = None, level: str = DEFAULT_LEVEL) -> None:
        pr = pruning if pruning is not None else p
        plans.append(Plan(plan_name(q, c, pr, level), q, c, pr, level))

    if conversion == ConversionFormat.torchscript:
        pass  # a TorchScript artifact takes no ONNX Runtime quantization; only pruning varies
    elif mode == QuantizationMode.fp16:
        add(_q(QuantizationMode.fp16), level="extended")
        add(_q(QuantizationMode.fp16), level="basic")
    else:
        D, S = QuantizationMode.dynamic_int8, QuantizationMode.static_int8  # noqa: N806 - one-letter names make the table of modes below readable
        if mode == QuantizationMode.none:
            add(_q(QuantizationMode.none), level="basic")
            add(_q(QuantizationMode.fp16))
        add(_q(D, per_channel=True))
        add(_q(D, per_channel=False))
        # Op subsets: the weight-heavy ops without Conv (ConvInteger is slow on many CPUs);
        # embeddings (Gather) stay in, they cost no time and hold many of the bytes.
        add(_q(D, per_channel=True, op_types=["MatMul", "Gemm", "Gather"]))
        add(_q(D, per_channel=False, op_types=["MatMul", "Gemm", "Gather"]))
        if has_calibration:
            add(_q(S, per_channel=True))
        add(_q(mode if mode != QuantizationMode.none else D, per_channel=base.quantization.per_channel,
               auto=base.quantization.sensitive_layers.count))
    # With and without pruning.
    if p.method != PruningMethod.none:
        add(first.quantization, pruning=Pruning())
    else:
        add(first.quantization, pruning=Pruning(method=PruningMethod.magnitude, sparsity=PRUNE_VARIANT_SPARSITY))
    if conversion != ConversionFormat.torchscript and mode not in (QuantizationMode.fp16,):
        if has_calibration:
            add(_q(QuantizationMode.static_int8, per_channel=False))
        add(base.quantization, level="extended")
    seen: set[str] = set()
    out = []
    for plan in plans:
        if plan.identity() in seen:
            continue
        seen.add(plan.identity())
        out.append(plan)
    return out[:max_candidates]


def plans_for(
    opt: Optimization, *, has_calibration: bool, torch_source: bool, conversion: ConversionFormat
) -> list[Plan]:
    """The plans a spec asks for: the base recipe, or the search's candidates."""
    if not opt.search.enabled:
        return [resolve(opt)]
    if opt.search.candidates:
        return [resolve(opt, r) for r in opt.search.candidates][: opt.search.max_candidates]
    return builtin_candidates(opt, has_calibration=has_calibration, torch_source=torch_source, conversion=conversion,
                              max_candidates=opt.search.max_candidates)


def check_plans(plans: Sequence[Plan], opt: Optimization, *, has_calibration: bool, torch_source: bool, conversion: ConversionFormat) -> None:
    """Refuse plans that cannot run, naming the spec field (the recipe's, for explicit candidates)."""
    explicit = bool(opt.search.enabled and opt.search.candidates)
    for i, plan in enumerate(plans):
        prefix = f"spec.optimization.search.candidates[{i}]" if explicit else "spec.optimization"
        mode = QuantizationMode(plan.quantization.mode)
        if mode == QuantizationMode.static_int8 and not has_calibration:
            raise InputError(f"{prefix}.quantization.mode", "static-int8 quantization needs calibration data: set data.calibration")
        if plan.pruning.method == PruningMethod.gradient:
            if not has_calibration:
                raise InputError(f"{prefix}.pruning.method", "gradient pruning needs calibration data: set data.calibration")
            if not torch_source:
                raise InputError(f"{prefix}.pruning.method", "gradient pruning needs a PyTorch model (TorchScript or torch.export); the source is ONNX")
        if conversion == ConversionFormat.torchscript and mode != QuantizationMode.none:
            raise InputError(f"{prefix}.quantization.mode",
                             f"{mode.value} quantization produces an ONNX model: set conversion.format: onnx (or quantization.mode: none)")
        q = plan.quantization
        if mode != QuantizationMode.none and q.scope == QuantizationScope.partial and not q.sensitive_layers.auto and not q.sensitive_layers.names:
            raise InputError(f"{prefix}.quantization.sensitiveLayers", "scope: partial needs sensitiveLayers.names or sensitiveLayers.auto: true")


@dataclass
class Outcome:
    """What one candidate produced (see report.candidate_entry for the wire form)."""

    plan: Plan
    passed: bool = False
    latency_ms: float | None = None
    size_bytes: int | None = None
    quality: dict[str, float] = field(default_factory=dict)
    reason: str = ""
    seconds: float = 0.0
    details: dict[str, Any] = field(default_factory=dict)
    artifact: Any = None


def choose(outcomes: Sequence[Outcome], tie: float = LATENCY_TIE) -> int | None:
    """Index of the winner: among passed candidates with a latency, the smallest artifact among
    those within `tie` (relative) of the fastest, then the fastest, then the earliest."""
    latency = {i: o.latency_ms for i, o in enumerate(outcomes) if o.passed and o.latency_ms is not None}
    if not latency:
        return None
    fastest = min(latency.values())
    near = [i for i, ms in latency.items() if ms <= fastest * (1 + tie)]
    return min(near, key=lambda i: (outcomes[i].size_bytes or 0, latency[i], i))


"""Candidate recipes: the spec's own optimization as one plan, or a search over several.

A Plan is a fully resolved recipe (quantization, clipping, pruning, graph optimization level).
`builtin_candidates` derives a search space from the spec's base optimization (variants of the
quantization family the spec asks for, so a search never trades away the size the spec wants):
dynamic and static int8 (MinMax, entropy and percentile calibration; per-channel with and without
reduce_range; per-tensor), int8 with the sensitive layers kept in float16 or float32 (also with the
MatMul/Gemm weights in int4 blocks), weight-only int4 (MatMulNBits), int4 with the most sensitive
third and half of its MatMuls kept at 8 bits, op subsets, pruning and graph levels. Given the
model's quantizable op types it leaves out variants that would do the same to the model as another
(an op subset that covers every quantizable op, int4 on a model without MatMul). With the size
objective the int4 family comes right after the spec's own recipe: the int8 variants differ in
speed, not in size.

`choose` picks among candidates that passed the gate by `optimization.objective`: latency (the
fastest; candidates within the measured spread of each other are ties and the smaller artifact
wins), size (the smallest; the faster among those of about the same size) or balanced (on the
Pareto front of latency and size, the smallest product of both relative to the best of each).
"Size" is the gzip-compressed transfer size where it is measured (edge and device targets,
whose packages travel compressed: the zeros of unstructured sparsity pay there), else the file's.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from ..api.types import (
    CalibrationMethod,
    Clipping,
    ClippingMethod,
    ConversionFormat,
    KeptType,
    Objective,
    Optimization,
    Pruning,
    PruningMethod,
    Quantization,
    QuantizationMode,
    QuantizationScope,
    Recipe,
    SensitiveLayers,
    Target,
)
from .errors import InputError

LATENCY_TIE: Final = 0.03  # smallest relative difference that is not a tie, whatever the spread
SIZE_TIE: Final = 0.02
INT8_MODES: Final = (QuantizationMode.dynamic_int8, QuantizationMode.static_int8)
# int4 with the most sensitive of its MatMuls kept at 8 bits: these shares of the model's MatMuls
# with a weight (a 6-layer encoder has 36: 12 and 18 kept).
INT8_KEPT_SHARES: Final = (3, 2)
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
        """Equal for plans that do the same to the model (defaults spelled out, settings that
        don't apply to the mode left out)."""
        return json.dumps([effective(self.quantization), self.transform_key(), self.graph_level], sort_keys=True)

    def describe(self) -> dict[str, Any]:
        q = self.quantization
        out: dict[str, Any] = {"quantization": QuantizationMode(q.mode).value, "graphOptimizationLevel": self.graph_level}
        if q.mode != QuantizationMode.none:
            if q.mode in INT8_MODES:
                out["perChannel"] = q.per_channel
                out["reduceRange"] = bool(q.reduce_range)
            if q.mode == QuantizationMode.static_int8:
                out["calibrationMethod"] = (q.calibration_method or CalibrationMethod.minmax).value
            out["scope"] = QuantizationScope(q.scope).value
            if q.op_types:
                out["opTypes"] = list(q.op_types)
            if q.int4_op_types and q.mode in INT8_MODES:
                out["int4OpTypes"] = list(q.int4_op_types)
            if q.scope == QuantizationScope.partial:
                sl = q.sensitive_layers
                out["sensitiveLayers"] = {"auto": sl.auto, "count": sl.count, "names": list(sl.names),
                                          "dtype": (sl.dtype or KeptType.float32).value}
        if self.clipping.method != ClippingMethod.none:
            out["clipping"] = self.clipping.model_dump(mode="json", by_alias=True, exclude_none=True)
        if self.pruning.method != PruningMethod.none:
            out["pruning"] = self.pruning.model_dump(mode="json", by_alias=True)
        return out


def effective(q: Quantization) -> dict[str, Any]:
    """The settings of `q` that change what quantization does, defaults resolved."""
    mode = QuantizationMode(q.mode)
    out: dict[str, Any] = {"mode": mode.value}
    if mode == QuantizationMode.none:
        return out
    if mode in INT8_MODES:
        out.update(perChannel=q.per_channel, reduceRange=bool(q.reduce_range), opTypes=sorted(q.op_types) if q.op_types else None)
        if q.int4_op_types:
            out["int4OpTypes"] = sorted(set(q.int4_op_types))
    if mode == QuantizationMode.static_int8:
        out["calibrationMethod"] = (q.calibration_method or CalibrationMethod.minmax).value
    if q.scope == QuantizationScope.partial and mode != QuantizationMode.fp16:
        sl = q.sensitive_layers
        out["sensitive"] = {"auto": sl.auto, "count": sl.count if sl.auto else None, "names": list(sl.names), "dtype": (sl.dtype or KeptType.float32).value}
    return out


def plan_name(q: Quantization, clipping: Clipping, pruning: Pruning, level: str = DEFAULT_LEVEL) -> str:
    """A readable, stable name: `dynamic-int8`, `static-int8-per-tensor-partial`, `fp32+magnitude-30`..."""
    mode = QuantizationMode(q.mode)
    parts = ["fp32" if mode == QuantizationMode.none else mode.value]
    if mode in INT8_MODES:
        if mode == QuantizationMode.static_int8 and q.calibration_method not in (None, CalibrationMethod.minmax):
            parts.append(CalibrationMethod(q.calibration_method).value)
        if not q.per_channel:
            parts.append("per-tensor")
        if q.reduce_range:
            parts.append("reduce-range")
        if q.op_types:
            parts.append("-".join(t.lower() for t in q.op_types))
    if mode not in (QuantizationMode.none, QuantizationMode.fp16) and q.scope == QuantizationScope.partial:
        parts.append("partial-auto" if q.sensitive_layers.auto else "partial")
        if q.sensitive_layers.dtype == KeptType.float16:
            parts.append("fp16")
        elif q.sensitive_layers.dtype == KeptType.int8:  # two counts are searched: the name tells them apart
            parts.append(f"int8-{q.sensitive_layers.count}")
    if mode in INT8_MODES and q.int4_op_types:
        parts.append("int4-" + "-".join(t.lower() for t in q.int4_op_types))
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


def _q(
    mode: QuantizationMode, *, per_channel: bool = True, op_types: list[str] | None = None, auto: int | None = None,
    calibration: CalibrationMethod | None = None, reduce_range: bool | None = None, kept: KeptType | None = None,
    int4: list[str] | None = None,
) -> Quantization:
    kw: dict[str, Any] = dict(mode=mode, per_channel=per_channel, op_types=op_types, calibration_method=calibration, reduce_range=reduce_range,
                              int4_op_types=int4)
    if auto:
        kw.update(scope=QuantizationScope.partial, sensitive_layers=SensitiveLayers(auto=True, count=auto, dtype=kept))
    return Quantization(**kw)


def effective_on(q: Quantization, model_ops: frozenset[str] | None) -> bool:
    """Whether `q` changes a model whose quantizable (weight-carrying) op types are `model_ops`
    differently from the same mode without its op subset; None: unknown, assume it does."""
    if model_ops is None:
        return True
    mode = QuantizationMode(q.mode)
    if mode == QuantizationMode.int4_weight_only:
        if q.scope == QuantizationScope.partial and q.sensitive_layers.dtype == KeptType.int8:
            return "MatMul" in model_ops
        return bool(model_ops & {"MatMul", "Gather"})
    if mode not in INT8_MODES:
        return True
    if not model_ops:
        return False
    if q.int4_op_types and not model_ops & set(q.int4_op_types) & {"MatMul", "Gemm", "Gather"}:
        return False  # no weight of that type: the same as plain int8
    if q.op_types:
        touched = model_ops & set(q.op_types)
        return bool(touched) and touched != model_ops
    return True


def default_objective(opt: Optimization, target: Target) -> Objective:
    """`optimization.objective`, else size for edge and device targets and latency for cloud."""
    if opt.objective is not None:
        return Objective(opt.objective)
    return Objective.latency if Target(target) == Target.cloud else Objective.size


def builtin_candidates(
    base: Optimization,
    *,
    has_calibration: bool,
    torch_source: bool,
    conversion: ConversionFormat,
    max_candidates: int,
    model_ops: frozenset[str] | None = None,
    matmuls: int | None = None,
    objective: Objective = Objective.latency,
) -> list[Plan]:
    """The search space when `spec.optimization.search.candidates` is omitted. The spec's own
    recipe comes first; then the families in an order that tries each at least once within a
    small `max_candidates` (for `objective` size the int4 family first); duplicates and (given
    `model_ops`, the model's quantizable op types) variants identical in effect to another are
    dropped; at most `max_candidates` plans. `matmuls`: how many MatMuls with a weight the model
    has (the int4 variants with some kept at 8 bits need it; without it they are left out)."""
    first = resolve(base)
    c, p = first.clipping, first.pruning
    mode = QuantizationMode(base.quantization.mode)
    plans: list[Plan] = [first]

    def add(q: Quantization, *, pruning: Pruning | None = None, level: str = DEFAULT_LEVEL) -> None:
        pr = pruning if pruning is not None else p
        plans.append(Plan(plan_name(q, c, pr, level), q, c, pr, level))

    D, S, I4 = QuantizationMode.dynamic_int8, QuantizationMode.static_int8, QuantizationMode.int4_weight_only  # noqa: N806 - one-letter names make the table of modes below readable
    count = base.quantization.sensitive_layers.count
    kept_counts = sorted({max(1, min(64, matmuls // share)) for share in INT8_KEPT_SHARES}) if matmuls else []
    int4_family = [_q(I4)] + [_q(I4, auto=n, kept=KeptType.int8) for n in kept_counts]
    if objective == Objective.size and conversion != ConversionFormat.torchscript and mode != QuantizationMode.fp16:
        for q in int4_family:
            add(q)
    if conversion == ConversionFormat.torchscript:
        pass  # a TorchScript artifact takes no ONNX Runtime quantization; only pruning varies
    elif mode == QuantizationMode.fp16:
        add(_q(QuantizationMode.fp16), level="extended")
        add(_q(QuantizationMode.fp16), level="basic")
    elif mode == I4:
        add(_q(I4), level="extended")
        add(_q(D, per_channel=True))
    else:
        if mode == QuantizationMode.none:
            add(_q(QuantizationMode.none), level="basic")
            add(_q(QuantizationMode.fp16))
        int8 = mode if mode in INT8_MODES else D
        add(_q(D, per_channel=True))
        if has_calibration:
            add(_q(S, per_channel=True))
            add(_q(S, per_channel=True, calibration=CalibrationMethod.entropy))
            add(_q(S, per_channel=True, calibration=CalibrationMethod.percentile))
        add(_q(D, per_channel=False))
        # Sensitive layers in float16 (half their bytes) and in float32.
        add(_q(int8, per_channel=True, auto=count, kept=KeptType.float16))
        # The same with the fully connected weights in int4 blocks (a CNN's classifier holds a
        # quarter of its weights; int8 alone stays under 4x smaller than float32).
        add(_q(int8, per_channel=True, auto=count, kept=KeptType.float16, int4=["Gemm", "MatMul"]))
        add(_q(I4))
        # Op subsets: the weight-heavy ops without Conv (ConvInteger is slow on many CPUs);
        # embeddings (Gather) stay in, they cost no time and hold many of the bytes.
        add(_q(D, per_channel=True, op_types=["MatMul", "Gemm", "Gather"]))
        if has_calibration:
            add(_q(S, per_channel=True, reduce_range=True))
            add(_q(S, per_channel=False))
        else:
            add(_q(D, per_channel=True, reduce_range=True))
        add(_q(int8, per_channel=base.quantization.per_channel, auto=count))
    # With and without pruning.
    if p.method != PruningMethod.none:
        add(first.quantization, pruning=Pruning())
    else:
        add(first.quantization, pruning=Pruning(method=PruningMethod.magnitude, sparsity=PRUNE_VARIANT_SPARSITY))
    if conversion != ConversionFormat.torchscript and mode != QuantizationMode.fp16:
        add(base.quantization, level="extended")
        for q in int4_family[1:]:  # other objectives: last (with size, already first)
            add(q)
    seen: set[str] = set()
    out = []
    for i, plan in enumerate(plans):
        if plan.identity() in seen or (i > 0 and not effective_on(plan.quantization, model_ops)):
            continue
        seen.add(plan.identity())
        out.append(plan)
    return out[:max_candidates]


def plans_for(
    opt: Optimization, *, has_calibration: bool, torch_source: bool, conversion: ConversionFormat, model_ops: frozenset[str] | None = None,
    matmuls: int | None = None, objective: Objective = Objective.latency,
) -> list[Plan]:
    """The plans a spec asks for: the base recipe, or the search's candidates."""
    if not opt.search.enabled:
        return [resolve(opt)]
    if opt.search.candidates:
        return [resolve(opt, r) for r in opt.search.candidates][: opt.search.max_candidates]
    return builtin_candidates(opt, has_calibration=has_calibration, torch_source=torch_source, conversion=conversion,
                              max_candidates=opt.search.max_candidates, model_ops=model_ops, matmuls=matmuls, objective=objective)


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
        if q.sensitive_layers.dtype == KeptType.int8 and mode != QuantizationMode.int4_weight_only:
            raise InputError(f"{prefix}.quantization.sensitiveLayers.dtype",
                             "sensitiveLayers.dtype: int8 keeps layers at 8 bits inside a 4-bit model: it needs quantization.mode: int4-weight-only")
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
    latency_spread: float | None = None
    pareto: bool | None = None
    transfer_bytes: int | None = None  # gzip-compressed model file (edge and device targets)

    @property
    def weight_bytes(self) -> int | None:
        """The size the search weighs: the transfer size where it is measured, else the file's."""
        return self.transfer_bytes if self.transfer_bytes is not None else self.size_bytes


def _tie(a: Outcome, b: Outcome, floor: float) -> float:
    return max(floor, a.latency_spread or 0.0, b.latency_spread or 0.0)


def same_speed(a: Outcome, b: Outcome, floor: float = LATENCY_TIE) -> bool:
    """Whether the latencies of a and b are within the larger of their spreads (at least `floor`)."""
    assert a.latency_ms is not None and b.latency_ms is not None
    lo, hi = sorted((a.latency_ms, b.latency_ms))
    return hi <= lo * (1 + _tie(a, b, floor))


def pareto(outcomes: Sequence[Outcome]) -> list[bool | None]:
    """Per outcome: True when it passed and no other passed candidate is at least as fast and
    as small and better in one; False when dominated; None when it didn't pass or wasn't timed."""
    ok = [i for i, o in enumerate(outcomes) if o.passed and o.latency_ms is not None and o.weight_bytes is not None]
    flags: list[bool | None] = [None] * len(outcomes)
    for i in ok:
        a = outcomes[i]
        flags[i] = not any(
            b.latency_ms <= a.latency_ms and b.weight_bytes <= a.weight_bytes and (b.latency_ms < a.latency_ms or b.weight_bytes < a.weight_bytes)  # type: ignore[operator]
            for j, b in ((j, outcomes[j]) for j in ok) if j != i
        )
    return flags


def choose(outcomes: Sequence[Outcome], objective: Objective = Objective.latency, tie: float = LATENCY_TIE) -> int | None:
    """Index of the winner among passed candidates with a latency (see the module's docstring);
    ties end with the earliest."""
    passed = [i for i, o in enumerate(outcomes) if o.passed and o.latency_ms is not None]
    if not passed:
        return None
    size = {i: outcomes[i].weight_bytes or 0 for i in passed}
    lat = {i: float(outcomes[i].latency_ms) for i in passed}  # type: ignore[arg-type]
    if objective == Objective.size:
        smallest = min(size.values())
        near = [i for i in passed if size[i] <= smallest * (1 + SIZE_TIE)]
        fastest = min(near, key=lambda i: (lat[i], i))
        same = [i for i in near if same_speed(outcomes[i], outcomes[fastest], tie)]
        return min(same, key=lambda i: (size[i], lat[i], i))
    if objective == Objective.balanced:
        front = [i for i, f in enumerate(pareto(outcomes)) if f]
        lat0, size0 = min(lat.values()), max(1, min(size.values()))
        return min(front, key=lambda i: ((lat[i] / lat0) * (size[i] / size0), i))
    fastest = min(passed, key=lambda i: (lat[i], i))
    near = [i for i in passed if same_speed(outcomes[i], outcomes[fastest], tie)]
    return min(near, key=lambda i: (size[i], lat[i], i))


"""Recipe plans: resolving spec + candidates, the built-in search space, refused plans, and the
choice of the winner."""

from __future__ import annotations

from typing import Any

import pytest

from model_operator.api.types import ConversionFormat, Objective, Optimization, Target
from model_operator.optimize.errors import InputError
from model_operator.optimize.search import (
    Outcome,
    Plan,
    builtin_candidates,
    check_plans,
    choose,
    default_objective,
    effective_on,
    pareto,
    plan_name,
    plans_for,
    resolve,
    same_speed,
)


def _opt(**kw: object) -> Optimization:
    return Optimization.model_validate(kw)


def test_plan_names() -> None:
    opt = _opt(quantization={"mode": "static-int8", "perChannel": False, "scope": "partial", "sensitiveLayers": {"auto": True}},
               pruning={"method": "magnitude", "sparsity": 0.3}, clipping={"method": "percentile", "percentile": 99.9})
    assert resolve(opt).name == "static-int8-per-tensor-partial-auto+clip-p99.9+magnitude-30"
    assert resolve(_opt()).name == "fp32"
    assert plan_name(_opt(quantization={"mode": "dynamic-int8", "opTypes": ["MatMul"]}).quantization, _opt().clipping, _opt().pruning,
                     "basic") == "dynamic-int8-matmul@basic"


def test_recipe_overrides_base() -> None:
    opt = _opt(pruning={"method": "magnitude"}, search={"enabled": True, "candidates": [{"name": "a", "quantization": {"mode": "fp16"},
                                                                                         "graphOptimizationLevel": "basic"}]})
    [plan] = plans_for(opt, has_calibration=False, torch_source=True, conversion=ConversionFormat.onnx)
    assert plan.name == "a" and plan.quantization.mode.value == "fp16" and plan.graph_level == "basic"
    assert plan.pruning.method.value == "magnitude", "what the recipe doesn't set comes from the base"


def test_builtin_space_for_int8() -> None:
    opt = _opt(quantization={"mode": "dynamic-int8"})
    plans = builtin_candidates(opt, has_calibration=True, torch_source=True, conversion=ConversionFormat.onnx, max_candidates=32)
    names = [p.name for p in plans]
    assert names[0] == "dynamic-int8", "the spec's own recipe first"
    assert len(names) == len(set(names)) and len({p.identity() for p in plans}) == len(plans)
    assert "static-int8" in names and "dynamic-int8-per-tensor" in names and "dynamic-int8-matmul-gemm-gather" in names
    assert "dynamic-int8-partial-auto" in names and "dynamic-int8+magnitude-30" in names and "dynamic-int8@extended" in names
    assert "static-int8-entropy" in names and "int4-weight-only" in names
    assert all(p.quantization.mode.value != "fp16" for p in plans), "an int8 spec is not searched into fp16"
    no_calib = builtin_candidates(opt, has_calibration=False, torch_source=True, conversion=ConversionFormat.onnx, max_candidates=32)
    assert not [p for p in no_calib if p.quantization.mode.value == "static-int8"]
    assert len(builtin_candidates(opt, has_calibration=True, torch_source=True, conversion=ConversionFormat.onnx, max_candidates=3)) == 3


def test_builtin_space_without_quantization_includes_fp32_and_fp16() -> None:
    names = [p.name for p in builtin_candidates(_opt(), has_calibration=False, torch_source=False, conversion=ConversionFormat.onnx, max_candidates=32)]
    assert names[:3] == ["fp32", "fp32@basic", "fp16"]


def test_builtin_space_for_torchscript_output_varies_pruning_only() -> None:
    plans = builtin_candidates(_opt(pruning={"method": "magnitude", "sparsity": 0.2}), has_calibration=False, torch_source=True,
                               conversion=ConversionFormat.torchscript, max_candidates=8)
    assert [p.name for p in plans] == ["fp32+magnitude-20", "fp32"]


@pytest.mark.parametrize(
    ("opt", "kwargs", "field"),
    [
        ({"quantization": {"mode": "static-int8"}}, {"has_calibration": False}, "spec.optimization.quantization.mode"),
        ({"pruning": {"method": "gradient"}}, {"torch_source": False}, "spec.optimization.pruning.method"),
        ({"quantization": {"mode": "dynamic-int8"}}, {"conversion": ConversionFormat.torchscript}, "spec.optimization.quantization.mode"),
        ({"quantization": {"mode": "dynamic-int8", "scope": "partial"}}, {}, "spec.optimization.quantization.sensitiveLayers"),
        ({"search": {"enabled": True, "candidates": [{"name": "ok"}, {"name": "s", "quantization": {"mode": "static-int8"}}]}},
         {"has_calibration": False}, "spec.optimization.search.candidates[1].quantization.mode"),
    ],
)
def test_refused_plans_name_the_field(opt: dict, kwargs: dict, field: str) -> None:
    o = _opt(**opt)
    args = {"has_calibration": True, "torch_source": True, "conversion": ConversionFormat.onnx, **kwargs}
    plans = plans_for(o, **args)
    with pytest.raises(InputError) as exc:
        check_plans(plans, o, **args)
    assert exc.value.where == field


def _out(name: str, passed: bool, latency: float | None, size: int) -> Outcome:
    base = resolve(_opt())
    return Outcome(Plan(name, base.quantization, base.clipping, base.pruning), passed=passed, latency_ms=latency, size_bytes=size)


def test_choose_fastest_passing() -> None:
    outs = [_out("a", True, 2.0, 100), _out("b", False, 0.5, 10), _out("c", True, 1.0, 500), _out("d", True, None, 1)]
    assert choose(outs) == 2


def test_choose_prefers_smaller_within_noise() -> None:
    outs = [_out("fast-big", True, 1.00, 500), _out("near-small", True, 1.02, 100), _out("slow-tiny", True, 1.2, 50)]
    assert choose(outs) == 1, "within the 3% floor: a tie, the smaller wins"


def test_ties_are_decided_by_the_measured_spread() -> None:
    outs = [_out("fast-big", True, 1.00, 500), _out("near-small", True, 1.08, 100)]
    assert choose(outs) == 0, "8% apart with no spread measured: not a tie"
    outs[0].latency_spread = 0.10
    assert choose(outs) == 1, "8% apart while the fastest's rounds spread over 10%: a tie, the smaller wins"
    outs[0].latency_spread, outs[1].latency_spread = 0.01, 0.09
    assert choose(outs) == 1, "the larger of the two spreads counts"
    assert same_speed(outs[0], outs[1]) and not same_speed(outs[0], _out("slow", True, 1.2, 1))


def test_objectives() -> None:
    outs = [_out("fast-big", True, 1.0, 1000), _out("mid", True, 1.5, 400), _out("slow-small", True, 3.0, 250),
            _out("slower-same-size", True, 4.0, 252), _out("tiny-rejected", False, 0.5, 10)]
    assert choose(outs, Objective.latency) == 0
    assert choose(outs, Objective.size) == 2, "the smallest; one 1% larger but slower loses"
    # balanced: on the front, the smallest (latency / fastest) * (size / smallest): 4.0, 2.4, 3.0
    assert choose(outs, Objective.balanced) == 1
    same = [_out("small-slow", True, 3.0, 250), _out("small-fast", True, 1.0, 254)]
    assert choose(same, Objective.size) == 1, "sizes within 2% are equal: the faster wins"


def test_pareto_flags() -> None:
    outs = [_out("a", True, 1.0, 1000), _out("b", True, 2.0, 500), _out("c", True, 2.5, 600), _out("d", False, 0.1, 1),
            _out("e", True, None, 1), _out("f", True, 1.0, 1000)]
    assert pareto(outs) == [True, True, False, None, None, True], "c is slower and bigger than b; equal twins both stay"


@pytest.mark.parametrize(("target", "objective", "want"), [
    ("cloud", None, Objective.latency), ("edge", None, Objective.size), ("device", None, Objective.size),
    ("edge", "latency", Objective.latency), ("cloud", "balanced", Objective.balanced),
])
def test_default_objective(target: str, objective: str | None, want: Objective) -> None:
    opt = _opt(**({"objective": objective} if objective else {}))
    assert default_objective(opt, Target(target)) == want


def test_builtin_space_has_the_families() -> None:
    plans = builtin_candidates(_opt(quantization={"mode": "dynamic-int8"}), has_calibration=True, torch_source=True,
                               conversion=ConversionFormat.onnx, max_candidates=32)
    names = [p.name for p in plans]
    for want in ("static-int8", "static-int8-entropy", "static-int8-percentile", "static-int8-reduce-range", "static-int8-per-tensor",
                 "dynamic-int8-partial-auto-fp16", "dynamic-int8-partial-auto", "int4-weight-only"):
        assert want in names, (want, names)
    first8 = names[:8]
    assert {"static-int8-entropy", "static-int8-percentile", "int4-weight-only", "dynamic-int8-partial-auto-fp16"} <= set(first8), \
        "each family is tried within the default maxCandidates"
    fp16_kept = next(p for p in plans if p.name == "dynamic-int8-partial-auto-fp16")
    assert fp16_kept.describe()["sensitiveLayers"]["dtype"] == "float16"
    assert next(p for p in plans if p.name == "static-int8-entropy").describe()["calibrationMethod"] == "entropy"


ENCODER: dict[str, Any] = dict(has_calibration=True, torch_source=True, conversion=ConversionFormat.onnx, model_ops=frozenset({"MatMul", "Gather"}))


def test_size_objective_tries_the_int4_family_first() -> None:
    """With the size objective the int4 family follows the spec's own recipe: int4 everywhere, then
    int4 with the most sensitive third and half of the MatMuls kept at 8 bits (36 MatMuls: 12, 18);
    every plan differs in effect from every other, and maxCandidates bounds the list."""
    opt = _opt(quantization={"mode": "dynamic-int8"})
    plans = builtin_candidates(opt, max_candidates=32, matmuls=36, objective=Objective.size, **ENCODER)
    names = [p.name for p in plans]
    assert names[:4] == ["dynamic-int8", "int4-weight-only", "int4-weight-only-partial-auto-int8-12", "int4-weight-only-partial-auto-int8-18"], names
    kept = plans[2].describe()
    assert kept["quantization"] == "int4-weight-only" and kept["sensitiveLayers"] == {"auto": True, "count": 12, "names": [], "dtype": "int8"}
    assert len({p.identity() for p in plans}) == len(plans) and len(set(names)) == len(names)
    assert [p.name for p in builtin_candidates(opt, max_candidates=4, matmuls=36, objective=Objective.size, **ENCODER)] == names[:4]
    # Latency: the same plans, the 8-bit-kept ones last (the int8 families first within a small maxCandidates).
    latency = [p.name for p in builtin_candidates(opt, max_candidates=32, matmuls=36, **ENCODER)]
    assert sorted(latency) == sorted(names) and latency[-2:] == names[2:4]
    # A tiny model: the shares round to one count, no duplicate; unknown MatMul count or none: no 8-bit-kept plan.
    tiny = [p.name for p in builtin_candidates(opt, max_candidates=32, matmuls=3, objective=Objective.size, **ENCODER)]
    assert [n for n in tiny if "partial-auto-int8" in n] == ["int4-weight-only-partial-auto-int8-1"]
    for matmuls, ops in ((None, ENCODER["model_ops"]), (4, frozenset({"Gather", "Conv"}))):
        args: dict[str, Any] = {**ENCODER, "model_ops": ops}
        assert not [p for p in builtin_candidates(opt, max_candidates=32, matmuls=matmuls, objective=Objective.size, **args)
                    if p.quantization.sensitive_layers.dtype is not None and p.quantization.sensitive_layers.dtype.value == "int8"]


def test_int8_kept_layers_need_int4() -> None:
    ok = _opt(quantization={"mode": "int4-weight-only", "scope": "partial", "sensitiveLayers": {"auto": True, "dtype": "int8"}})
    check_plans([resolve(ok)], ok, has_calibration=False, torch_source=True, conversion=ConversionFormat.onnx)
    bad = _opt(search={"enabled": True, "candidates": [
        {"name": "a", "quantization": {"mode": "dynamic-int8", "scope": "partial", "sensitiveLayers": {"auto": True, "dtype": "int8"}}}]})
    with pytest.raises(InputError) as err:
        check_plans(plans_for(bad, has_calibration=False, torch_source=True, conversion=ConversionFormat.onnx), bad,
                    has_calibration=False, torch_source=True, conversion=ConversionFormat.onnx)
    assert err.value.where == "spec.optimization.search.candidates[0].quantization.sensitiveLayers.dtype"


def test_no_variant_identical_in_effect() -> None:
    opt = _opt(quantization={"mode": "dynamic-int8"})
    args: dict[str, Any] = dict(has_calibration=True, torch_source=True, conversion=ConversionFormat.onnx, max_candidates=32)
    # A transformer: MatMul and Gather, no Conv. The MatMul/Gemm/Gather subset is the whole model.
    names = [p.name for p in builtin_candidates(opt, model_ops=frozenset({"MatMul", "Gather"}), **args)]
    assert "dynamic-int8-matmul-gemm-gather" not in names and "int4-weight-only" in names
    # A CNN with Conv and Gemm only: no int4 (no MatMul, no Gather), the subset differs from the whole.
    names = [p.name for p in builtin_candidates(opt, model_ops=frozenset({"Conv", "Gemm"}), **args)]
    assert "int4-weight-only" not in names and "dynamic-int8-matmul-gemm-gather" in names
    # Spelled-out defaults are the same plan as omitted ones.
    a = resolve(_opt(quantization={"mode": "static-int8"}))
    b = resolve(_opt(quantization={"mode": "static-int8", "calibrationMethod": "minmax", "reduceRange": False}))
    c = resolve(_opt(quantization={"mode": "dynamic-int8", "calibrationMethod": "entropy"}))
    assert a.identity() == b.identity() and c.identity() == resolve(opt).identity()
    assert effective_on(a.quantization, frozenset()) is False and effective_on(a.quantization, None) is True


def test_choose_none_when_nothing_passed() -> None:
    assert choose([_out("a", False, 1.0, 1)]) is None
    assert choose([]) is None

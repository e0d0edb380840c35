"""Recipe plans: resolving spec + candidates, the built-in search space, refused plans, and the
choice of the winner."""

from __future__ import annotations

import pytest

from model_operator.api.types import ConversionFormat, Optimization
from model_operator.optimize.errors import InputError
from model_operator.optimize.search import Outcome, Plan, builtin_candidates, check_plans, choose, plan_name, plans_for, resolve


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
    outs = [_out("fast-big", True, 1.00, 500), _out("near-small", True, 1.04, 100), _out("slow-tiny", True, 1.2, 50)]
    assert choose(outs) == 1


def test_choose_none_when_nothing_passed() -> None:
    assert choose([_out("a", False, 1.0, 1)]) is None
    assert choose([]) is None

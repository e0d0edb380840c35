"""The optimizer writes temporaries only under its work dir. ONNX Runtime's symbolic shape
inference saves `sym_shape_infer_temp.onnx` (and its external data) into the working directory
when it cannot infer every shape, as with a custom operator; the caller's directory stays empty."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest


def test_preprocess_leaves_nothing_in_the_callers_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from onnx import TensorProto, helper

    from model_operator.optimize.quantize import preprocess

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    w = helper.make_tensor("w", TensorProto.FLOAT, [4, 4], [0.1] * 16)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Foo", ["h"], ["y"], domain="custom.op")]
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y], [w]),
                              opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("custom.op", 1)])
    work, cwd = tmp_path / "work", tmp_path / "cwd"
    work.mkdir()
    cwd.mkdir()
    onnx.save(model, str(work / "src.onnx"))
    monkeypatch.chdir(cwd)
    assert preprocess(work / "src.onnx", work / "pre.onnx").exists()
    assert sorted(p.name for p in cwd.iterdir()) == []
    assert (work / "sym_shape_infer_temp.onnx").exists(), "the case no longer makes ONNX Runtime write its temporary"


@pytest.mark.parametrize("quant", [
    {"mode": "dynamic-int8", "reduceRange": True},
    {"mode": "static-int8", "calibrationMethod": "entropy"},
    {"mode": "static-int8", "calibrationMethod": "percentile"},
    {"mode": "int4-weight-only"},
], ids=["dynamic-reduce-range", "static-entropy", "static-percentile", "int4"])
def test_quantizers_leave_nothing_in_the_callers_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, quant: dict) -> None:
    """The recipe families of issue 16 (reduce_range, the entropy and percentile calibrators,
    MatMulNBits) write nothing into the caller's directory either (a guard: on this model none of
    them does even without the work-dir chdir)."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    from model_operator.api.types import Quantization
    from model_operator.optimize.data import Dataset
    from model_operator.optimize.quantize import quantize

    rng = np.random.default_rng(0)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 64])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 32])
    w = numpy_helper.from_array(rng.standard_normal((64, 32)).astype(np.float32), "w")
    model = helper.make_model(helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "g", [x], [y], [w]),
                              opset_imports=[helper.make_opsetid("", 17)])
    work, cwd = tmp_path / "work", tmp_path / "cwd"
    work.mkdir()
    cwd.mkdir()
    onnx.save(model, str(work / "pre.onnx"))
    monkeypatch.chdir(cwd)
    calibration = Dataset(inputs={"x": rng.standard_normal((16, 64)).astype(np.float32)})
    res = quantize(work / "pre.onnx", work / "model.onnx", Quantization.model_validate(quant), calibration=calibration, input_names=["x"])
    assert res.quantized_nodes >= 1 and res.path.exists()
    assert sorted(p.name for p in cwd.iterdir()) == []

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

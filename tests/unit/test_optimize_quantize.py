"""Sensitive layers kept with float16 weights: the initializer is stored in float16 behind a Cast
to float32 under its old name, so the graph computes as before and the file shrinks."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def test_weights_to_float16(tmp_path: Path) -> None:
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from model_operator.optimize.quantize import weights_to_float16

    rng = np.random.default_rng(0)
    w1, w2 = rng.standard_normal((64, 64)).astype(np.float32), rng.standard_normal((64, 8)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w1"], ["h"], name="mm1"), helper.make_node("MatMul", ["h", "w2"], ["y"], name="mm2")],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 64])], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 8])],
        initializer=[numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")],
    )
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    x = rng.standard_normal((4, 64)).astype(np.float32)
    before = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    size = path.stat().st_size

    assert weights_to_float16(path, ["mm1", "not-a-node"]) == 1
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    types = {i.name: i.data_type for i in model.graph.initializer}
    assert types == {"w1_fp16": TensorProto.FLOAT16, "w2": TensorProto.FLOAT}, "only mm1's weight"
    assert [n.op_type for n in model.graph.node] == ["Cast", "MatMul", "MatMul"]
    assert path.stat().st_size < size - 64 * 64 * 2 + 200
    after = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(after, before, rtol=2e-2, atol=2e-2)
    assert not np.array_equal(after, before), "the weights really are rounded to float16"

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


def test_static_int8_gives_a_conv_the_range_of_its_relu6(tmp_path: Path) -> None:
    """Static int8 without opTypes quantizes Clip and Relu too, so a convolution followed by ReLU6
    is quantized over [0, 6] (what the next layer sees), not over its own, far wider, pre-activation
    range: a few int8 steps over [0, 6] wrecked a pretrained EfficientNet-Lite0."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from model_operator.api.types import Quantization, QuantizationMode
    from model_operator.optimize.data import Dataset
    from model_operator.optimize.quantize import quantize

    rng = np.random.default_rng(0)
    w1 = (rng.standard_normal((16, 4, 3, 3)) * 10).astype(np.float32)  # pre-activation range of about ±200
    w2 = rng.standard_normal((2, 16, 1, 1)).astype(np.float32) * 0.2
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w1"], ["h"], name="conv1", pads=[1, 1, 1, 1]),
         helper.make_node("Clip", ["h", "lo", "hi"], ["a"], name="relu6"),
         helper.make_node("Conv", ["a", "w2"], ["y"], name="conv2")],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 2, 8, 8])],
        initializer=[numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2"),
                     numpy_helper.from_array(np.array(0, np.float32), "lo"), numpy_helper.from_array(np.array(6, np.float32), "hi")],
    )
    src, out = tmp_path / "m.onnx", tmp_path / "q.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(src))
    x = rng.standard_normal((32, 4, 8, 8)).astype(np.float32)

    quantize(src, out, Quantization(mode=QuantizationMode.static_int8, per_channel=True), calibration=Dataset(inputs={"x": x}), input_names=["x"])

    model = onnx.load(str(out))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    conv1 = next(n for n in model.graph.node if n.name == "conv1")
    conv1_out = next(n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == conv1.output[0])
    assert float(inits[conv1_out.input[1]]) <= 6.0 / 255 * 1.01, "conv1's output is quantized over the ReLU6's range"
    before = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    after = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert np.abs(after - before).max() < 0.1 * np.abs(before).max()

"""int8 with some op types' weights in int4 blocks (`int4OpTypes`): the Gemm -> MatMul + Add
rewrite, the static int8 + int4-classifier recipe on a small conv + Gemm classifier, and the
search candidate that carries it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from model_operator.api.types import ConversionFormat, FloatType, Optimization, Quantization, QuantizationMode, QuantizationScope


def _gemm_model(alpha: float = 1.0, beta: float = 1.0, trans_b: int = 1, bias: bool = True) -> tuple[Any, np.ndarray, np.ndarray]:
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(1)
    w = rng.standard_normal((3, 5) if trans_b else (5, 3)).astype(np.float32)
    c = rng.standard_normal(3).astype(np.float32)
    inputs = ["x", "w"] + (["c"] if bias else [])
    inits = [numpy_helper.from_array(w, "w")] + ([numpy_helper.from_array(c, "c")] if bias else [])
    graph = helper.make_graph(
        [helper.make_node("Gemm", inputs, ["y"], name="fc", alpha=alpha, beta=beta, transB=trans_b)],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 3])], initializer=inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), w, c


@pytest.mark.parametrize(("alpha", "beta", "trans_b", "bias"), [(1.0, 1.0, 1, True), (0.5, 2.0, 1, True), (1.0, 1.0, 0, True), (2.0, 1.0, 0, False)])
def test_gemm_to_matmul_computes_the_same(alpha: float, beta: float, trans_b: int, bias: bool) -> None:
    import onnx
    import onnxruntime as ort

    from model_operator.optimize.gemm import gemm_to_matmul

    model, _, _ = _gemm_model(alpha, beta, trans_b, bias)
    x = np.random.default_rng(2).standard_normal((4, 5)).astype(np.float32)
    before = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]

    assert gemm_to_matmul(model) == ["fc"]

    onnx.checker.check_model(model)
    ops = [(n.op_type, n.name) for n in model.graph.node]
    assert ops == ([("MatMul", "fc"), ("Add", "fc/bias")] if bias else [("MatMul", "fc")])
    assert "w" not in {i.name for i in model.graph.initializer}, "the Gemm's own weight is gone"
    after = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(after, before, rtol=1e-5, atol=1e-5)


def test_gemm_to_matmul_leaves_what_it_cannot_or_was_told_not_to_rewrite() -> None:
    from onnx import TensorProto, helper

    from model_operator.optimize.gemm import gemm_to_matmul

    model, _, _ = _gemm_model()
    assert gemm_to_matmul(model, skip={"fc"}) == []
    assert gemm_to_matmul(model, names={"other"}) == []
    assert [n.op_type for n in model.graph.node] == ["Gemm"]
    # A weight that is a graph input, not an initializer: nothing to quantize, left alone.
    graph = helper.make_graph([helper.make_node("Gemm", ["x", "w"], ["y"], name="fc")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 5]), helper.make_tensor_value_info("w", TensorProto.FLOAT, [5, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])])
    dynamic = helper.make_model(graph)
    assert gemm_to_matmul(dynamic) == []
    assert [n.op_type for n in dynamic.graph.node] == ["Gemm"]


def _cnn(tmp_path: Path) -> tuple[Path, np.ndarray]:
    """conv(3->16) + ReLU, global average pool, flatten, Gemm classifier 64 -> 10."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w1 = (rng.standard_normal((64, 3, 3, 3)) * 0.3).astype(np.float32)
    b1 = (rng.standard_normal(64) * 0.1).astype(np.float32)
    wf = (rng.standard_normal((10, 64)) * 0.2).astype(np.float32)
    bf = (rng.standard_normal(10) * 0.1).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w1", "b1"], ["h"], name="conv", pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["h"], ["a"], name="relu"),
         helper.make_node("GlobalAveragePool", ["a"], ["p"], name="pool"),
         helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
         helper.make_node("Gemm", ["f", "wf", "bf"], ["y"], name="classifier", transB=1)],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 10])],
        initializer=[numpy_helper.from_array(a, n) for a, n in ((w1, "w1"), (b1, "b1"), (wf, "wf"), (bf, "bf"))],
    )
    src = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(src))
    return src, rng.standard_normal((32, 3, 8, 8)).astype(np.float32)


@pytest.mark.parametrize("mode", [QuantizationMode.static_int8, QuantizationMode.dynamic_int8])
def test_int8_with_an_int4_classifier(tmp_path: Path, mode: QuantizationMode) -> None:
    """The convolution in int8, the Gemm classifier as MatMulNBits (int4 blocks) + Add; outputs
    stay close to the float model's and the file is smaller than plain int8's."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto

    from model_operator.optimize.data import Dataset
    from model_operator.optimize.quantize import quantize

    src, x = _cnn(tmp_path)
    data = Dataset(inputs={"x": x})
    plain, mixed = tmp_path / "int8.onnx", tmp_path / "mixed.onnx"
    quantize(src, plain, Quantization(mode=mode), calibration=data, input_names=["x"])
    res = quantize(src, mixed, Quantization(mode=mode, int4_op_types=["Gemm"]), calibration=data, input_names=["x"])

    model = onnx.load(str(mixed))
    ops = [n.op_type for n in model.graph.node]
    assert "Gemm" not in ops and "MatMul" not in ops
    nbits = [n for n in model.graph.node if n.op_type == "MatMulNBits"]
    assert len(nbits) == 1 and nbits[0].domain == "com.microsoft"
    attrs = {a.name: a.i for a in nbits[0].attribute}
    assert attrs["bits"] == 4 and attrs["K"] == 64 and attrs["N"] == 10
    inits = {i.name: i for i in model.graph.initializer}
    assert inits[nbits[0].input[1]].data_type == TensorProto.UINT8, "packed int4 weights"
    assert "ConvInteger" in ops if mode == QuantizationMode.dynamic_int8 else any(
        inits[n.input[0]].data_type == TensorProto.INT8 for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits
    ), "the convolution's weights are int8"
    assert "MatMulNBits" in res.op_types and not list(tmp_path.glob("*.matmul.onnx")), "the rewritten temporary is removed"
    assert mixed.stat().st_size < plain.stat().st_size

    before = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    after = ort.InferenceSession(str(mixed), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    cos = (before * after).sum(1) / np.linalg.norm(before, axis=1) / np.linalg.norm(after, axis=1)
    assert cos.min() > 0.97, cos.min()
    assert np.abs(after - before).max() < 0.15 * np.abs(before).max()


def test_a_classifier_kept_in_float_stays_out_of_int4(tmp_path: Path) -> None:
    import onnx

    from model_operator.optimize.data import Dataset
    from model_operator.optimize.quantize import quantize

    src, x = _cnn(tmp_path)
    out = tmp_path / "q.onnx"
    q = Quantization(mode=QuantizationMode.static_int8, int4_op_types=["Gemm"])
    quantize(src, out, q, calibration=Dataset(inputs={"x": x}), input_names=["x"], exclude=["classifier"])
    ops = [n.op_type for n in onnx.load(str(out)).graph.node]
    assert "Gemm" in ops and "MatMulNBits" not in ops


def test_search_tries_int8_with_int4_fully_connected_weights_once() -> None:
    from model_operator.optimize.search import builtin_candidates, effective_on, plan_name

    base = Optimization.model_validate({"quantization": {"mode": "static-int8"}, "search": {"enabled": True}})
    args: dict[str, Any] = dict(has_calibration=True, torch_source=False, conversion=ConversionFormat.onnx, max_candidates=32)
    cnn = builtin_candidates(base, model_ops=frozenset({"Conv", "Gemm"}), **args)
    mixed = [p for p in cnn if p.quantization.int4_op_types]
    assert [p.name for p in mixed] == ["static-int8-partial-auto-fp16-int4-gemm-matmul"]
    q = mixed[0].quantization
    assert q.mode == QuantizationMode.static_int8 and q.scope == QuantizationScope.partial and q.sensitive_layers.dtype == FloatType.float16
    assert mixed[0].describe()["int4OpTypes"] == ["Gemm", "MatMul"]
    # Without fully connected weights it would be the fp16-partial candidate again: left out.
    convs = builtin_candidates(base, model_ops=frozenset({"Conv"}), **args)
    assert not [p for p in convs if p.quantization.int4_op_types]
    assert not effective_on(Quantization(mode=QuantizationMode.static_int8, int4_op_types=["Gather"]), frozenset({"Conv", "Gemm"}))
    assert plan_name(Quantization(mode=QuantizationMode.dynamic_int8, int4_op_types=["Gather"]), base.clipping, base.pruning) == "dynamic-int8-int4-gather"


def test_int4_op_types_accepts_only_weight_ops() -> None:
    from pydantic import ValidationError

    assert Quantization.model_validate({"mode": "static-int8", "int4OpTypes": ["Gemm"]}).int4_op_types == ["Gemm"]
    with pytest.raises(ValidationError):
        Quantization.model_validate({"mode": "static-int8", "int4OpTypes": ["Conv"]})

"""Signatures (model vs spec, dynamic axes, sample inputs), datasets (.npz) and the fp16 graph
conversion."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from model_operator.api.types import Conversion, TensorSpec
from model_operator.optimize.data import load_npz
from model_operator.optimize.errors import InputError
from model_operator.optimize.signature import dynamic_axes, merge_inputs, sample_feeds

IDS = TensorSpec(name="input_ids", dtype="int64", shape=[-1, -1])
MASK = TensorSpec(name="attention_mask", dtype="int64", shape=[-1, -1])
IMG = TensorSpec(name="input", dtype="float32", shape=[-1, 1, 8, 8])


def test_spec_overrides_open_dims() -> None:
    model = [TensorSpec(name="input_ids", dtype="int64", shape=[-1, -1])]
    merged = merge_inputs(model, [TensorSpec(name="input_ids", dtype="int64", shape=[-1, 128])], by_name=True)
    assert merged[0].shape == [-1, 128]
    assert merge_inputs(model, None, by_name=True) == model


@pytest.mark.parametrize(
    ("spec", "by_name", "field", "text"),
    [
        ([TensorSpec(name="ids", dtype="int64", shape=[-1, -1]), MASK], True, "spec.model.inputs[0].name", "'ids' is not an input of the model"),
        ([IDS], True, "spec.model.inputs", "the model's input 'attention_mask' is missing"),
        ([IDS, TensorSpec(name="attention_mask", shape=[-1, -1])], True, "spec.model.inputs[1].dtype", "float32 in the spec but int64"),
        ([IDS, TensorSpec(name="attention_mask", dtype="int64", shape=[-1])], True, "spec.model.inputs[1].shape", "rank 1 in the spec but 2"),
        ([IDS], False, "spec.model.inputs", "lists 1 inputs but the model takes 2"),
    ],
)
def test_mismatch_names_the_field(spec: list[TensorSpec], by_name: bool, field: str, text: str) -> None:
    model = [TensorSpec(name="input_ids", dtype="int64", shape=[-1, 16]), TensorSpec(name="attention_mask", dtype="int64", shape=[-1, 16])]
    with pytest.raises(InputError) as exc:
        merge_inputs(model, spec, by_name=by_name)
    assert exc.value.where == field and text in exc.value.reason


def test_dynamic_axes() -> None:
    seq = Conversion.model_validate({"dynamicAxes": {"batch": True, "sequence": True}})
    assert dynamic_axes(TensorSpec(name="ids", dtype="int64", shape=[4, 16]), seq, is_input=True) == [0, 1]
    assert dynamic_axes(TensorSpec(name="x", shape=[4, 16]), seq, is_input=True) == [0], "sequence axes are for integer inputs"
    assert dynamic_axes(TensorSpec(name="ids", dtype="int64", shape=[4, 16]), Conversion(), is_input=True) == [0]
    assert dynamic_axes(TensorSpec(name="x", shape=[4, -1, 3]), Conversion.model_validate({"dynamicAxes": {"batch": False}}), is_input=False) == [1]


def test_sample_feeds_prefer_matching_data() -> None:
    data = {"x": np.arange(5 * 64, dtype=np.float64).reshape(5, 1, 8, 8)}
    feeds = sample_feeds([IMG], data)
    assert feeds["input"].shape == (2, 1, 8, 8) and feeds["input"].dtype == np.float32, "alias 'x', cast to the signature dtype"
    feeds = sample_feeds([TensorSpec(name="input", shape=[-1, 1, 28, 28])], data)
    assert feeds["input"].shape == (2, 1, 28, 28), "data that doesn't fit the signature is not used"
    feeds = sample_feeds([IDS, MASK], None)
    assert feeds["input_ids"].shape == (2, 8) and feeds["input_ids"].dtype == np.int64


def test_load_npz(tmp_path: Path) -> None:
    p = tmp_path / "v.npz"
    np.savez(p, input=np.zeros((10, 1, 8, 8), np.float64), labels=np.arange(10))
    ds = load_npz(p, field_name="spec.data.validation.uri", uri="v.npz", inputs=[IMG], samples=4)
    assert ds.labels is not None
    assert ds.size == 4 and ds.inputs["input"].dtype == np.float32 and list(ds.labels) == [0, 1, 2, 3]
    assert [len(b["input"]) for b in ds.batches(3)] == [3, 1]


@pytest.mark.parametrize(
    ("arrays", "text"),
    [
        ({"other": np.zeros((3, 1, 8, 8))}, "no array 'input' for model input 'input' (the file has: other)"),
        ({"input": np.zeros((3, 8, 8))}, "array 'input' has shape [3, 8, 8], the model input 'input' is [-1, 1, 8, 8]"),
        ({"input": np.zeros((3, 1, 8, 8)), "labels": np.zeros(2, np.int64)}, "'labels' must be 3 integers"),
        ({"input": np.array([["a"] * 64] * 3).reshape(3, 1, 8, 8)}, "needs float32"),
    ],
)
def test_bad_datasets(tmp_path: Path, arrays: dict, text: str) -> None:
    p = tmp_path / "v.npz"
    np.savez(p, **arrays)
    with pytest.raises(InputError) as exc:
        load_npz(p, field_name="spec.data.calibration.uri", uri="s3://b/v.npz", inputs=[IMG], samples=None)
    assert exc.value.where == "spec.data.calibration.uri" and exc.value.reason.startswith("s3://b/v.npz: ") and text in exc.value.reason


def test_not_an_npz(tmp_path: Path) -> None:
    p = tmp_path / "v.npz"
    p.write_bytes(b"garbage")
    with pytest.raises(InputError, match=r"v.npz: not a readable .npz file"):
        load_npz(p, field_name="f", uri="v.npz", inputs=[IMG], samples=None)


def test_fp16_conversion_keeps_float32_io_and_answers() -> None:
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from model_operator.optimize.fp16 import convert_checked

    rng = np.random.default_rng(0)
    w = rng.standard_normal((16, 8)).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"]),
        helper.make_node("Softmax", ["h"], ["s"], axis=-1),
        helper.make_node("Cast", ["ids"], ["idsf"], to=TensorProto.FLOAT),
        helper.make_node("Add", ["s", "idsf"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 16]), helper.make_tensor_value_info("ids", TensorProto.INT64, [None, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 8])],
        [numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    half, blocked = convert_checked(model)
    assert numpy_helper.to_array(next(i for i in half.graph.initializer if i.name == "w")).dtype == np.float16
    assert [i.type.tensor_type.elem_type for i in half.graph.input] == [TensorProto.FLOAT, TensorProto.INT64]
    assert half.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
    feeds = {"x": rng.standard_normal((3, 16)).astype(np.float32), "ids": np.ones((3, 8), np.int64)}
    ref = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    got = ort.InferenceSession(half.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, ref, atol=2e-2)
    onnx.checker.check_model(half)

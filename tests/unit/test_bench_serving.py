"""The pure pieces of benchmarks/serving.py: reading a served model's signature from its ONNX file
(what `--model-file` serves) and naming the request in the results' conditions."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCH))

serving = importlib.import_module("serving")


def tiny_classifier(weight_as_input: bool) -> onnx.ModelProto:
    """x [batch, 3, 4, 4] float32 -> Flatten -> Gemm with W [48, 5] -> logits [batch, 5]; W is an
    initializer, also listed among the graph inputs when `weight_as_input` (older exporters did)."""
    w = helper.make_tensor("W", TensorProto.FLOAT, [48, 5], np.zeros(48 * 5, np.float32).tolist())
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 4, 4])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 5])
    ins = [x, helper.make_tensor_value_info("W", TensorProto.FLOAT, [48, 5])] if weight_as_input else [x]
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["x"], ["f"], axis=1), helper.make_node("Gemm", ["f", "W"], ["logits"])],
        "tiny", ins, [y], initializer=[w],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_signature_read_from_the_file_names_shapes_and_dtypes() -> None:
    for weight_as_input in (False, True):
        ins, outs = serving.onnx_signature(tiny_classifier(weight_as_input))
        assert [(t.name, t.shape, t.dtype.value) for t in ins] == [("x", [-1, 3, 4, 4], "float32")]
        assert [(t.name, t.shape, t.dtype.value) for t in outs] == [("logits", [-1, 5], "float32")]


def test_integer_inputs_keep_their_dtype() -> None:
    ids = helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"])
    out = helper.make_tensor_value_info("y", TensorProto.INT64, ["batch", "seq"])
    graph = helper.make_graph([helper.make_node("Identity", ["input_ids"], ["y"])], "ids", [ids], [out])
    ins, outs = serving.onnx_signature(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    assert [(t.name, t.shape, t.dtype.value) for t in ins] == [("input_ids", [-1, -1], "int64")]
    assert outs[0].dtype.value == "int64"


def test_request_description() -> None:
    one = {"input": np.zeros((1, 3, 224, 224), np.float32)}
    assert serving.describe_request(one) == "[1, 3, 224, 224] float32"
    two = {"input_ids": np.ones((1, 16), np.int64), "attention_mask": np.ones((1, 16), np.int64)}
    assert serving.describe_request(two) == "input_ids [1, 16] int64, attention_mask [1, 16] int64"


def test_compute_per_execution_counts_each_batched_execution_once() -> None:
    # 100 batch-1 requests served in 10 executions of 10 ms: Triton records 10 ms for each request.
    stats = serving.sweep.ServerStats(inferences=100, executions=10, queue_ns=0, compute_infer_ns=100 * 10_000_000, success_ns=0)
    assert serving.compute_per_execution_ms(stats) == 10.0
    # 5 requests of 8 samples each, one execution each, 20 ms: 40 inferences, 5 requests.
    eight = serving.sweep.ServerStats(inferences=40, executions=5, queue_ns=0, compute_infer_ns=5 * 20_000_000, success_ns=0)
    assert serving.compute_per_execution_ms(eight, request_batch=8) == 20.0

"""The real Triton server (nvidia-pytriton's build) on repositories written by write_repository:
the Python-backend model answers like ONNX Runtime over HTTP and gRPC, batches concurrent
requests, exposes nv_inference_* metrics, passes the golden probe; two servers run at once;
a broken model fails the start fast; stopping leaves no process behind."""

from __future__ import annotations

import os
import re
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from model_operator.api.types import DType, DynamicBatching, Serving, TensorSpec
from model_operator.triton import client
from model_operator.triton.repository import write_repository
from model_operator.triton.server import TritonServer, TritonStartError

pytestmark = pytest.mark.slow

RNG = np.random.default_rng(7)
CLF_IN = [TensorSpec(name="input", shape=[-1, 1, 8, 8])]
CLF_OUT = [TensorSpec(name="logits", shape=[-1, 10])]
TXT_IN = [
    TensorSpec(name="input_ids", dtype=DType.int64, shape=[-1, -1]),
    TensorSpec(name="attention_mask", dtype=DType.int64, shape=[-1, -1]),
]
TXT_OUT = [TensorSpec(name="pooled", shape=[-1, 4])]


def _save(graph: onnx.GraphProto, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def classifier_onnx(path: Path) -> Path:
    """[batch, 1, 8, 8] float -> [batch, 10] logits (flatten, dense, relu, dense)."""
    w1 = RNG.normal(size=(64, 32)).astype(np.float32)
    w2 = RNG.normal(size=(32, 10)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Flatten", ["input"], ["flat"], axis=1),
            helper.make_node("MatMul", ["flat", "w1"], ["h"]),
            helper.make_node("Relu", ["h"], ["r"]),
            helper.make_node("MatMul", ["r", "w2"], ["logits"]),
        ],
        "classifier",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")],
    )
    return _save(graph, path)


def encoder_onnx(path: Path) -> Path:
    """input_ids, attention_mask [batch, seq] int64 -> masked mean of embeddings [batch, 4]."""
    emb = RNG.normal(size=(100, 4)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Gather", ["emb", "input_ids"], ["e"]),
            helper.make_node("Cast", ["attention_mask"], ["m"], to=TensorProto.FLOAT),
            helper.make_node("Unsqueeze", ["m", "axis2"], ["m3"]),
            helper.make_node("Mul", ["e", "m3"], ["em"]),
            helper.make_node("ReduceSum", ["em", "axis1"], ["s"], keepdims=0),
            helper.make_node("ReduceSum", ["m3", "axis1"], ["n"], keepdims=0),
            helper.make_node("Max", ["n", "one"], ["n1"]),
            helper.make_node("Div", ["s", "n1"], ["pooled"]),
        ],
        "encoder",
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "seq"]),
        ],
        [helper.make_tensor_value_info("pooled", TensorProto.FLOAT, ["batch", 4])],
        [
            numpy_helper.from_array(emb, "emb"),
            numpy_helper.from_array(np.array([2], np.int64), "axis2"),
            numpy_helper.from_array(np.array([1], np.int64), "axis1"),
            numpy_helper.from_array(np.array(1.0, np.float32), "one"),
        ],
    )
    return _save(graph, path)


def text_batch(batch: int, seq: int) -> dict[str, np.ndarray]:
    ids = RNG.integers(0, 100, size=(batch, seq), dtype=np.int64)
    mask = np.ones((batch, seq), np.int64)
    mask[:, seq // 2 + 1 :] = RNG.integers(0, 2, size=(batch, seq - seq // 2 - 1))
    return {"input_ids": ids, "attention_mask": mask}


class Models:
    def __init__(self, root: Path) -> None:
        self.clf = classifier_onnx(root / "clf.onnx")
        self.enc = encoder_onnx(root / "enc.onnx")
        self.sessions = {
            "clf": ort.InferenceSession(str(self.clf), providers=["CPUExecutionProvider"]),
            "enc": ort.InferenceSession(str(self.enc), providers=["CPUExecutionProvider"]),
        }

    def expect(self, model: str, inputs: dict[str, np.ndarray]) -> np.ndarray:
        return self.sessions[model].run(None, inputs)[0]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Models:
    return Models(tmp_path_factory.mktemp("onnx"))


@pytest.fixture(scope="module")
def repository(models: Models, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("repo")
    write_repository(root, "clf", models.clf, artifact_format="onnx", inputs=CLF_IN, outputs=CLF_OUT,
                     serving=Serving(max_batch_size=8, instance_count=1), target="edge", backend="python")
    # A long queue delay so concurrent requests are reliably batched together.
    write_repository(root, "enc", models.enc, artifact_format="onnx", inputs=TXT_IN, outputs=TXT_OUT,
                     serving=Serving(max_batch_size=16, dynamic_batching=DynamicBatching(max_queue_delay_microseconds=200_000)),
                     target="cloud", backend="python", warmup=True)
    return root


@pytest.fixture(scope="module")
def server(repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    s = TritonServer(repository, log_file=tmp_path_factory.mktemp("log") / "triton.log")
    s.start_and_wait(timeout=120)
    try:
        yield s
    finally:
        assert s.stop() == 0, s.log_tail()


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_classifier_answers_like_onnxruntime(server: TritonServer, models: Models, protocol: str) -> None:
    endpoint = server.http_endpoint if protocol == "http" else server.grpc_endpoint
    x = RNG.random((5, 1, 8, 8), dtype=np.float32)
    got = client.infer(endpoint, "clf", {"input": x}, protocol=protocol)["logits"]
    np.testing.assert_allclose(got, models.expect("clf", {"input": x}), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_int64_multi_input_encoder_with_dynamic_sequence(server: TritonServer, models: Models, protocol: str) -> None:
    endpoint = server.http_endpoint if protocol == "http" else server.grpc_endpoint
    for batch, seq in [(1, 3), (4, 17), (2, 128)]:
        feed = text_batch(batch, seq)
        got = client.infer(endpoint, "enc", feed, protocol=protocol)["pooled"]
        np.testing.assert_allclose(got, models.expect("enc", feed), rtol=1e-5, atol=1e-6)


def test_metadata_reports_the_signature(server: TritonServer) -> None:
    meta = client.model_metadata(server.http_endpoint, "enc")
    assert [(i["name"], i["datatype"], i["shape"]) for i in meta["inputs"]] == [
        ("input_ids", "INT64", [-1, -1]),
        ("attention_mask", "INT64", [-1, -1]),
    ]
    assert client.model_config(server.grpc_endpoint, "enc", "grpc")["max_batch_size"] == 16


def test_concurrent_requests_are_batched_and_each_gets_its_rows(server: TritonServer, models: Models) -> None:
    feeds = [text_batch(1 + i % 3, 8 if i % 2 else 12) for i in range(16)]
    triton_client = client.connect(server.grpc_endpoint, "grpc")
    try:
        before = triton_client.get_inference_statistics("enc", as_json=True)
        with ThreadPoolExecutor(max_workers=16) as pool:
            answers = list(pool.map(lambda f: client.infer(server.grpc_endpoint, "enc", f, protocol="grpc"), feeds))
        after = triton_client.get_inference_statistics("enc", as_json=True)
    finally:
        triton_client.close()
    for feed, answer in zip(feeds, answers):
        np.testing.assert_allclose(answer["pooled"], models.expect("enc", feed), rtol=1e-5, atol=1e-6)
    stats_before = before["model_stats"][0]
    stats_after = after["model_stats"][0]
    executions = int(stats_after.get("execution_count", 0)) - int(stats_before.get("execution_count", 0))
    inferences = int(stats_after.get("inference_count", 0)) - int(stats_before.get("inference_count", 0))
    assert inferences == sum(len(f["input_ids"]) for f in feeds)
    assert executions < len(feeds), "the dynamic batcher should have put several requests in one execution"


def test_metrics_count_successful_requests(server: TritonServer) -> None:
    x = RNG.random((2, 1, 8, 8), dtype=np.float32)
    client.infer(server.http_endpoint, "clf", {"input": x})
    with urllib.request.urlopen(server.metrics_url, timeout=10) as resp:
        text = resp.read().decode()
    match = re.search(r'^nv_inference_request_success\{model="clf",version="1"\} (\d+)', text, re.M)
    assert match and int(match.group(1)) >= 1, text[:2000]
    for family in ("nv_inference_queue_duration_us", "nv_inference_compute_infer_duration_us", "nv_inference_pending_request_count"):
        assert family in text


def test_golden_probe_passes_and_catches_drift(server: TritonServer, models: Models, tmp_path: Path) -> None:
    x = RNG.random((20, 1, 8, 8), dtype=np.float32)
    logits = models.expect("clf", {"input": x})
    golden = tmp_path / "golden.npz"
    np.savez(golden, input=x, logits=logits, labels=logits.argmax(1))
    result = client.probe(server.http_url, "clf", golden, {"maxTop1Drop": 0.0, "minCosine": 0.999, "maxAbsError": 1e-3})
    assert result.passed, result.reason
    assert result.samples == 20 and result.agreement == 1.0
    # Stored answers from another model: the probe must say the live one disagrees.
    np.savez(golden, input=x, logits=-logits)
    result = client.probe(server.grpc_endpoint, "clf", golden, {"maxTop1Drop": 0.05}, protocol="grpc", samples=10)
    assert not result.passed and result.samples == 10 and "top-1" in result.reason
    feed = text_batch(6, 9)
    np.savez(golden, **feed, pooled=models.expect("enc", feed))
    assert client.probe(server.http_endpoint, "enc", golden, {"minCosine": 0.999}, task="embedding").passed


def test_two_servers_at_once(repository: Path, server: TritonServer, models: Models, tmp_path: Path) -> None:
    with TritonServer(repository, log_file=tmp_path / "second.log", model_control_mode="explicit", load_models=["clf"]) as second:
        assert second.http_port not in (server.http_port, server.grpc_port, server.metrics_port)
        x = RNG.random((3, 1, 8, 8), dtype=np.float32)
        a = client.infer(server.http_endpoint, "clf", {"input": x})["logits"]
        b = client.infer(second.http_endpoint, "clf", {"input": x})["logits"]
        np.testing.assert_allclose(a, b, rtol=1e-6)
        # Explicit model control: only the named model is loaded.
        assert client.connect(second.http_endpoint).is_model_ready("enc") is False
    assert second.process is not None and second.process.returncode == 0


def test_stop_leaves_no_process_behind(repository: Path, tmp_path: Path) -> None:
    s = TritonServer(repository, log_file=tmp_path / "t.log").start_and_wait(timeout=120)
    pid = s.pid
    assert pid is not None
    assert s.stop() == 0
    with pytest.raises(ProcessLookupError):
        os.killpg(pid, 0)  # the server and its Python-backend stubs are gone
    assert not s.is_ready()


def test_a_model_that_does_not_match_its_config_fails_the_start(models: Models, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    write_repository(repo, "bad", models.clf, artifact_format="onnx", inputs=[TensorSpec(name="pixels", shape=[-1, 1, 8, 8])],
                     outputs=CLF_OUT, serving=None, target="edge", backend="python")
    server = TritonServer(repo, log_file=tmp_path / "bad.log")
    with pytest.raises(TritonStartError, match="pixels"):
        server.start_and_wait(timeout=120)
    assert server.process is not None and server.process.poll() is not None

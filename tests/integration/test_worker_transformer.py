"""The worker on a transformer encoder (int64 input_ids + attention_mask, dynamic batch and
sequence axes) through every step: torch.export and TorchScript sources, clipping, gradient
pruning, automatic sensitive layers, static int8 on an ONNX source, and a built-in search."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import EncoderFiles, check_artifact, check_summary, mean_cosine, ort_run, run_worker, token_batch

pytestmark = pytest.mark.slow


def _original(encoder: EncoderFiles, feeds: dict[str, np.ndarray]) -> np.ndarray:
    import torch

    with torch.inference_mode():
        return encoder.module(torch.from_numpy(feeds["input_ids"]), torch.from_numpy(feeds["attention_mask"])).numpy()


def _check_dynamic_axes(encoder: EncoderFiles, model: Path, min_cosine: float = 0.99) -> None:
    """The artifact takes other batch sizes and sequence lengths than it was traced with, and
    answers like the original model."""
    rng = np.random.default_rng(7)
    for batch, seq in ((1, 5), (3, 20)):
        feeds = token_batch(rng, batch, seq)
        got = ort_run(model, feeds)[0]
        assert got.shape == (batch, 32)
        assert mean_cosine(got, _original(encoder, feeds)) >= min_cosine


def test_exported_program_with_builtin_search(encoder: EncoderFiles, tmp_path: Path) -> None:
    spec = {
        # An output named like an internal tensor of the export ("embedding" from aten.embedding).
        "model": {"uri": str(encoder.exported), "task": "embedding", "outputs": [{"name": "embedding", "dtype": "float32", "shape": [-1, 32]}]},
        "data": {"validation": {"uri": str(encoder.validation)}, "calibration": {"uri": str(encoder.calibration)}},
        "optimization": {"quantization": {"mode": "dynamic-int8"}, "search": {"enabled": True, "maxCandidates": 6}, "qualityGate": {"minCosine": 0.99}},
        "conversion": {"dynamicAxes": {"batch": True, "sequence": True}},
        "target": "edge",
        "serving": {"maxBatchSize": 8},
    }
    dest = tmp_path / "out"
    res = run_worker(dest, spec=spec, name="encoder")
    assert res.rc == 0, res.stderr
    report = check_artifact(dest, "encoder")
    check_summary(res.summary, str(dest), report)
    opt = report["optimization"]
    assert len(opt["candidates"]) == 6 and len({c["name"] for c in opt["candidates"]}) == 6
    assert opt["qualityAfter"]["cosine"] >= 0.99
    assert report["artifact"]["inputs"] == [
        {"name": "input_ids", "dtype": "int64", "shape": [-1, -1]},
        {"name": "attention_mask", "dtype": "int64", "shape": [-1, -1]},
    ]
    assert report["artifact"]["originalSizeBytes"] / report["artifact"]["sizeBytes"] > 2.5
    config = (dest / "repository/encoder/config.pbtxt").read_text()
    assert "TYPE_INT64" in config and "max_batch_size: 8" in config
    _check_dynamic_axes(encoder, dest / "repository/encoder/1/model.onnx")
    golden = np.load(dest / "golden.npz")
    assert set(golden.files) == {"input_ids", "attention_mask", "embedding"}


def test_torchscript_gradient_pruning_clipping_auto_sensitive(encoder: EncoderFiles, tmp_path: Path) -> None:
    spec = {
        "model": {"uri": str(encoder.torchscript), "task": "embedding", "inputs": EncoderFiles.INPUTS,
                  "outputs": [{"name": "embedding", "dtype": "float32", "shape": [-1, 32]}]},
        "data": {"validation": {"uri": str(encoder.validation)}, "calibration": {"uri": str(encoder.calibration)}},
        "optimization": {
            "quantization": {"mode": "dynamic-int8", "scope": "partial", "sensitiveLayers": {"auto": True, "count": 2}},
            "clipping": {"method": "percentile", "percentile": 99.99},
            "pruning": {"method": "gradient", "sparsity": 0.05},
            "qualityGate": {"minCosine": 0.97},
        },
        "conversion": {"dynamicAxes": {"sequence": True}},
    }
    dest = tmp_path / "out"
    res = run_worker(dest, spec=spec, name="encoder")
    assert res.rc == 0, res.stderr
    report = check_artifact(dest, "encoder")
    opt = report["optimization"]
    assert len(opt["excludedNodes"]) == 2
    assert opt["pruning"]["sparsity"] == pytest.approx(0.05, abs=0.005)
    assert "sensitive layers kept in float" in res.stderr
    import onnx

    graph = onnx.load(str(dest / "repository/encoder/1/model.onnx")).graph
    names = {n.name for n in graph.node}
    assert set(opt["excludedNodes"]) <= names, "excluded nodes stay (unquantized) in the graph"
    _check_dynamic_axes(encoder, dest / "repository/encoder/1/model.onnx", min_cosine=0.97)


def test_onnx_source_static_int8(encoder: EncoderFiles, tmp_path: Path) -> None:
    spec = {
        "model": {"uri": str(encoder.onnx), "task": "embedding"},
        "data": {"validation": {"uri": str(encoder.validation), "samples": 32}, "calibration": {"uri": str(encoder.calibration)}},
        "optimization": {"quantization": {"mode": "static-int8", "perChannel": True, "opTypes": ["MatMul"]}, "qualityGate": {"minCosine": 0.95}},
    }
    dest = tmp_path / "out"
    res = run_worker(dest, spec=spec, name="encoder")
    assert res.rc == 0, res.stderr
    report = check_artifact(dest, "encoder")
    assert report["source"]["format"] == "onnx" and report["data"]["validation"]["samples"] == 32
    assert report["optimization"]["quantizedNodes"] > 0
    _check_dynamic_axes(encoder, dest / "repository/encoder/1/model.onnx", min_cosine=0.95)


def test_fp16_keeps_int64_inputs(encoder: EncoderFiles, tmp_path: Path) -> None:
    spec = {
        "model": {"uri": str(encoder.onnx), "task": "embedding"},
        "data": {"validation": {"uri": str(encoder.validation)}},
        "optimization": {"quantization": {"mode": "fp16"}, "qualityGate": {"minCosine": 0.999}},
    }
    dest = tmp_path / "out"
    res = run_worker(dest, spec=spec, name="encoder")
    assert res.rc == 0, res.stderr
    report = check_artifact(dest, "encoder")
    assert "float16" in report["artifact"]["weightElementsByType"] and "float" not in report["artifact"]["weightElementsByType"]
    _check_dynamic_axes(encoder, dest / "repository/encoder/1/model.onnx", min_cosine=0.999)


def test_torchscript_output(encoder: EncoderFiles, tmp_path: Path) -> None:
    import torch

    spec = {
        "model": {"uri": str(encoder.torchscript), "task": "embedding", "inputs": EncoderFiles.INPUTS},
        "data": {"validation": {"uri": str(encoder.validation)}},
        "optimization": {"pruning": {"method": "magnitude", "sparsity": 0.2}, "qualityGate": {"minCosine": 0.98}},
        "conversion": {"format": "torchscript"},
    }
    dest = tmp_path / "out"
    res = run_worker(dest, spec=spec, name="encoder")
    assert res.rc == 0, res.stderr
    report = check_artifact(dest, "encoder", fmt="torchscript")
    assert report["optimization"]["pruning"]["sparsity"] == pytest.approx(0.2, abs=0.01)
    module = torch.jit.load(str(dest / "repository/encoder/1/model.pt"))
    feeds = token_batch(np.random.default_rng(3), 2, 9)
    with torch.inference_mode():
        got = module(torch.from_numpy(feeds["input_ids"]), torch.from_numpy(feeds["attention_mask"])).numpy()
    assert mean_cosine(got, _original(encoder, feeds)) >= 0.98


def test_structured_pruning_removes_heads_and_ffn_rows_from_an_onnx_encoder(encoder: EncoderFiles, tmp_path: Path) -> None:
    """The `structured` candidate on the ONNX encoder removes attention heads and FFN rows
    (report.json says which heads each layer kept), is gated like every candidate, and the
    artifact still takes any batch and sequence."""
    import onnx

    spec = {
        "model": {"uri": str(encoder.onnx), "task": "embedding"},
        "data": {"validation": {"uri": str(encoder.validation)}, "calibration": {"uri": str(encoder.calibration)}},
        "optimization": {"search": {"enabled": True, "candidates": [
            {"name": "fp32", "quantization": {"mode": "none"}},
            {"name": "shrunk", "quantization": {"mode": "none"}, "pruning": {"method": "structured", "sparsity": 0.25}},
        ]}, "qualityGate": {"minCosine": 0.5}, "objective": "size"},
        "conversion": {"dynamicAxes": {"batch": True, "sequence": True}},
    }
    dest = tmp_path / "out"
    res = run_worker(dest, spec=spec, name="encoder")
    assert res.rc == 0, res.stderr[-3000:]
    report = check_artifact(dest, "encoder")
    cands = {c["name"]: c for c in report["optimization"]["candidates"]}
    shrunk = cands["shrunk"]
    pr = shrunk["pruning"]
    assert pr["attentionBlocks"] == 2 and pr["heads"] == 8 and pr["headsRemoved"] == 2, pr
    assert sum(int(v.split("/")[0]) for v in pr["headsKeptPerLayer"].values()) == 6
    assert pr["channelsRemoved"] == round(0.25 * 2 * 64) and "headsLeftWhole" not in pr
    assert "structured pruning: 2 of 8 attention heads removed in 2 blocks" in res.stderr
    assert shrunk["passed"] and shrunk["sizeBytes"] < 0.9 * cands["fp32"]["sizeBytes"]
    assert report["optimization"]["recipe"] == "shrunk", "the size objective takes the smaller candidate that passed"
    model = dest / "repository/encoder/1/model.onnx"
    assert int(sum(int(np.prod(i.dims)) for i in onnx.load(str(model)).graph.initializer)) == pr["parametersAfter"]
    _check_dynamic_axes(encoder, model, min_cosine=0.5)

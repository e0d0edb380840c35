"""Pruning that pays, through the worker: structured pruning of the digits CNN removes channels
from the exported graph (a smaller artifact with fewer parameters, gated like every candidate;
too aggressive a ratio is rejected), and an edge package reports its compressed transfer size,
where unstructured sparsity pays."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import Digits, check_artifact, check_summary, ort_run, run_worker

pytestmark = pytest.mark.slow

DIGITS_IO = {
    "inputs": [{"name": "input", "dtype": "float32", "shape": [-1, 1, 8, 8]}],
    "outputs": [{"name": "logits", "dtype": "float32", "shape": [-1, 10]}],
}


def params(path: Path) -> int:
    return int(sum(int(np.prod(i.dims)) for i in onnx.load(str(path)).graph.initializer))


def spec(digits: Digits, candidates: list[dict], gate: float) -> dict:
    return {
        "model": {"uri": str(digits.torchscript), **DIGITS_IO},
        "data": {"validation": {"uri": str(digits.validation)}, "calibration": {"uri": str(digits.calibration), "samples": 128}},
        "optimization": {"search": {"enabled": True, "candidates": candidates}, "qualityGate": {"maxTop1Drop": gate}, "objective": "size"},
        "target": "edge",
        "serving": {"maxBatchSize": 8},
    }


def test_structured_pruning_shrinks_the_artifact_and_the_package_travels_compressed(digits: Digits, tmp_path: Path) -> None:
    dest = tmp_path / "out"
    res = run_worker(dest, spec=spec(digits, [
        {"name": "fp32", "quantization": {"mode": "none"}},
        {"name": "shrunk", "quantization": {"mode": "none"}, "pruning": {"method": "structured", "sparsity": 0.25}},
        {"name": "sparse", "quantization": {"mode": "none"}, "pruning": {"method": "magnitude", "sparsity": 0.6}},
    ], 0.02), name="digits")
    assert res.rc == 0, res.stderr[-3000:]
    report = check_artifact(dest, "digits")
    check_summary(res.summary, str(dest), report)
    cands = {c["name"]: c for c in report["optimization"]["candidates"]}
    shrunk = cands["shrunk"]
    assert shrunk["passed"], shrunk["reason"]
    pr = shrunk["pruning"]
    assert pr["shrunk"] and pr["groups"] == 3 and pr["channelsRemoved"] == round(0.25 * (16 + 32 + 64)) and pr["scores"] == "activation x weight norm"
    assert shrunk["sizeBytes"] < 0.8 * cands["fp32"]["sizeBytes"], "channels left the file"
    assert len(pr["keptPerLayer"]) == 3 and "structured pruning: 28 of 112 channels removed in 3 layers" in res.stderr
    # The zeros of magnitude pruning keep the file's size; they pay in transfer only.
    assert cands["sparse"]["sizeBytes"] >= cands["fp32"]["sizeBytes"] * 0.98
    assert cands["sparse"]["transferBytes"] < 0.75 * cands["fp32"]["transferBytes"]
    art = report["artifact"]
    assert art["transferBytes"] > 0 and art["transferCompression"].startswith("tar+gzip")
    assert res.summary["artifact"]["transferBytes"] == art["transferBytes"]
    assert pr["parametersAfter"] < 0.8 * pr["parametersBefore"]
    # The size objective of an edge target weighs what travels: the smallest transfer wins.
    passed = [c for c in cands.values() if c["passed"]]
    assert report["optimization"]["recipe"] == min(passed, key=lambda c: c["transferBytes"])["name"]
    model = dest / art["modelFile"]
    assert ort_run(model, {"input": np.load(digits.validation)["input"][:5]})[0].shape == (5, 10)
    if report["optimization"]["recipe"] == "shrunk":
        assert params(model) == pr["parametersAfter"]


def test_too_aggressive_structured_pruning_is_rejected_by_the_gate(digits: Digits, tmp_path: Path) -> None:
    res = run_worker(tmp_path / "out", spec=spec(digits, [
        {"name": "gutted", "quantization": {"mode": "none"}, "pruning": {"method": "structured", "sparsity": 0.7}},
    ], 0.005), name="digits")
    assert res.rc == 3, res.stderr[-3000:]
    assert res.summary["ok"] is False and res.summary["exitCode"] == 3
    assert "rejected" in res.summary["reason"] and "top1" in res.summary["reason"].lower()
    assert not (tmp_path / "out").exists(), "nothing published"

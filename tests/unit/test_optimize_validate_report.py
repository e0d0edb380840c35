"""Quality metrics and the gate's decisions; the summary's shape and size; errors and exit codes."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

from model_operator.api.types import Optimization, Pooling, QualityGate, Task
from model_operator.optimize import report
from model_operator.optimize.data import MIN_SPLIT, split
from model_operator.optimize.errors import EXIT_GATE, EXIT_INPUT, GateError, InputError, first_line, one_line
from model_operator.optimize.search import Outcome, Plan, resolve
from model_operator.optimize.validate import View, compare, cosine, gate, reference_quality, sample_cosines, worst


def test_cosine() -> None:
    a = np.array([[1.0, 0.0], [0.0, 2.0], [0.0, 0.0]])
    b = np.array([[2.0, 0.0], [0.0, -1.0], [0.0, 0.0]])
    assert cosine(a, b) == pytest.approx((1 - 1 + 1) / 3)
    # one scalar per sample (regression): the whole vector
    assert cosine(np.array([1.0, 2.0]), np.array([2.0, 4.0])) == pytest.approx(1.0)


def test_classification_with_labels() -> None:
    ref = [np.array([[2.0, 1.0], [0.0, 1.0], [3.0, 0.0], [0.0, 5.0]])]
    cand = [np.array([[2.0, 1.0], [1.0, 0.0], [3.0, 0.0], [0.0, 5.0]])]
    labels = np.array([0, 1, 0, 1])
    before = reference_quality(Task.classification, ref, labels, None)
    after = compare(Task.classification, ref, cand, labels, None)
    assert before == {"top1": 1.0} and after["top1"] == 0.75 and after["agreement"] == 0.75
    v = gate(Task.classification, before, after, QualityGate(max_top1_drop=0.01))
    assert not v.passed and v.reason.startswith("top-1 dropped 25.00 points (1.0000 -> 0.7500)")
    assert gate(Task.classification, before, after, QualityGate(max_top1_drop=0.25)).passed


def test_classification_without_labels_uses_agreement() -> None:
    ref = [np.eye(4)]
    cand = [np.eye(4)[[0, 1, 2, 0]]]
    after = compare(Task.classification, ref, cand, None, None)
    assert "top1" not in after and after["agreement"] == 0.75
    v = gate(Task.classification, {}, after, QualityGate(max_top1_drop=0.1))
    assert not v.passed and "agrees with the original on 75.00%" in v.reason


def test_embedding_gate_and_max_abs_error() -> None:
    ref = [np.array([[1.0, 0.0], [0.0, 1.0]])]
    cand = [np.array([[1.0, 0.1], [0.0, 1.0]])]
    after = compare(Task.embedding, ref, cand, None, None)
    assert after["maxAbsError"] == pytest.approx(0.1)
    assert gate(Task.embedding, {}, after, QualityGate(min_cosine=0.99)).passed
    v = gate(Task.embedding, {}, after, QualityGate(min_cosine=0.999))
    assert not v.passed and "below qualityGate.minCosine 0.999" in v.reason
    v = gate(Task.embedding, {}, after, QualityGate(min_cosine=0.9, max_abs_error=0.05))
    assert not v.passed and "qualityGate.maxAbsError" in v.reason


def _tokens() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two samples of three tokens (hidden 2); the second has one padding token, where the
    candidate differs wildly."""
    ref = np.array([[[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], [[1.0, 1.0], [1.0, 1.0], [0.0, 0.0]]])
    cand = ref.copy()
    cand[1, 2] = [-50.0, 7.0]
    mask = np.array([[1, 1, 1], [1, 1, 0]])
    return ref, cand, mask


def test_embedding_view_masks_padding_and_pools() -> None:
    ref, cand, mask = _tokens()
    assert cosine(cand, ref) < 0.8, "flattened, the padding token's garbage counts"
    assert sample_cosines(cand, ref, View(mask=mask)) == pytest.approx([1.0, 1.0]), "masked, it doesn't"
    pooled = View(mask=mask, pooling=Pooling.mean).apply(ref)
    np.testing.assert_allclose(pooled, [[2 / 3, 1 / 3], [1.0, 1.0]])
    assert View(pooling=Pooling.cls).apply(ref).tolist() == [[1.0, 0.0], [1.0, 1.0]]
    after = compare(Task.embedding, [ref], [cand], None, None, View(mask=mask, pooling=Pooling.mean))
    assert after["cosine"] == pytest.approx(1.0) and after["minCosine"] == pytest.approx(1.0)
    assert after["maxAbsError"] == pytest.approx(50.0), "maxAbsError stays on the raw outputs"
    sub_mask = View(mask=mask).subset(np.array([1])).mask
    assert sub_mask is not None and sub_mask.tolist() == [[1, 1, 0]]


def test_min_sample_cosine_gate() -> None:
    ref = np.array([[1.0, 0.0]] * 9 + [[0.0, 1.0]])
    cand = ref.copy()
    cand[9] = [0.5, 0.5]  # one sample at cosine 0.707, the mean still 0.97
    after = compare(Task.embedding, [ref], [cand], None, None)
    assert after["minCosine"] == pytest.approx(0.7071, abs=1e-4) and after["cosine"] > 0.97
    assert gate(Task.embedding, {}, after, QualityGate(min_cosine=0.95)).passed
    v = gate(Task.embedding, {}, after, QualityGate(min_cosine=0.95, min_sample_cosine=0.9))
    assert not v.passed and "qualityGate.minSampleCosine 0.9" in v.reason


def test_worst_over_batches() -> None:
    assert worst([{"cosine": 0.99, "maxAbsError": 0.1, "top1": 0.9}, {"cosine": 0.98, "maxAbsError": 0.05, "top1": 0.95}]) == \
        {"cosine": 0.98, "maxAbsError": 0.1, "top1": 0.9}


def test_split_is_seeded_disjoint_and_covers() -> None:
    a, b = split(300), split(300)
    assert a.held_out and np.array_equal(a.selection, b.selection) and np.array_equal(a.report, b.report)
    assert len(a.selection) == 200 and len(a.report) == 100
    assert not set(a.selection) & set(a.report) and sorted([*a.selection, *a.report]) == list(range(300))
    assert a.selection.tolist() != list(range(200)), "a random selection, not the first samples"
    assert not np.array_equal(split(300, seed=1).report, a.report)
    small = split(MIN_SPLIT - 1)
    assert not small.held_out and small.selection.tolist() == small.report.tolist() == list(range(MIN_SPLIT - 1))
    edge = split(MIN_SPLIT)
    assert edge.held_out and len(edge.report) >= 1 and len(edge.selection) >= 1


def _outcome(i: int) -> Outcome:
    base = resolve(Optimization())
    plan = Plan(f"candidate-number-{i:02d}-with-a-long-name", base.quantization, base.clipping, base.pruning)
    o = Outcome(plan, passed=i % 2 == 0, latency_ms=1.0 + i / 7, size_bytes=1000 + i, latency_spread=0.0123456, pareto=i % 2 == 0 or None)
    o.quality = {"top1": 0.97123456, "agreement": 0.99, "cosine": 0.9999, "maxAbsError": 0.123456, "extra": 1.0}
    o.reason = "" if o.passed else "top-1 dropped 2.00 points (0.9700 -> 0.9500), more than qualityGate.maxTop1Drop 1.00"
    return o


def _summary(n: int, chosen: int) -> dict:
    outs = [_outcome(i) for i in range(n)]
    figures = {"latencyMsBefore": 2.0, "latencyMsAfter": 1.0, "latencyMsOnnxFp32": 1.5, "speedup": 2.0, "speedupVsOnnxFp32": 1.5,
               "latencyBatchSize": 1, "threads": 2, "latencySpread": 0.01, "qualitySamples": 120, "objective": "latency"}
    return report.summary(spec_hash="abc", uri="s3://b/p", sha256="f" * 64, fmt="onnx", size_bytes=1, original_size_bytes=4,
                          recipe=outs[chosen].plan.name, quality_before={"top1": 0.97}, quality_after={"top1": 0.97},
                          figures=figures, outcomes=outs, chosen=chosen)


def test_summary_shape() -> None:
    s = _summary(3, 0)
    assert list(s) == ["ok", "reason", "specHash", "artifact", "optimization"]
    assert set(s["artifact"]) == {"uri", "sha256", "format", "sizeBytes", "originalSizeBytes"}
    assert set(s["optimization"]) == {"recipe", "qualityBefore", "qualityAfter", "latencyMsBefore", "latencyMsAfter", "latencyMsOnnxFp32",
                                      "speedup", "speedupVsOnnxFp32", "latencyBatchSize", "threads", "latencySpread", "qualitySamples",
                                      "objective", "candidates"}
    assert set(s["optimization"]["candidates"][0]) == {"name", "passed", "latencyMs", "latencySpread", "pareto", "sizeBytes", "quality", "reason"}
    assert "pareto" not in s["optimization"]["candidates"][1], "no flag for a rejected candidate"
    from model_operator.api.types import OptimizationStatus

    status = OptimizationStatus.model_validate(s["optimization"]).model_dump(mode="json", by_alias=True, exclude_none=True)
    assert status["latencyMsOnnxFp32"] == 1.5 and status["speedupVsOnnxFp32"] == 1.5 and status["latencyBatchSize"] == 1
    assert status["candidates"][0]["pareto"] is True and status["candidates"][0]["latencySpread"] == 0.0123456
    assert s["optimization"]["candidates"][0]["quality"]["top1"] == 0.971235, "floats are rounded"


@pytest.mark.parametrize("chosen", [0, 30])
def test_summary_fits_4k_with_32_candidates(chosen: int) -> None:
    s = _summary(32, chosen)
    assert len(report.dumps(s).encode()) < 4096
    names = [c["name"] for c in s["optimization"]["candidates"]]
    assert s["optimization"]["recipe"] in names, "the chosen candidate is never dropped"
    assert s["optimization"]["candidatesOmitted"] == 32 - len(names)


def test_failure_summary() -> None:
    assert report.failure("abc", "spec.model.uri: x: no such file", 2) == {
        "ok": False, "reason": "spec.model.uri: x: no such file", "specHash": "abc", "exitCode": 2}
    many = [{"name": f"candidate-{i}", "passed": False, "quality": {"top1": 0.5, "loss": 1.0}, "reason": "x" * 400} for i in range(40)]
    gated = report.failure("abc", "no candidate passed", 3, many)
    assert len(report.dumps(gated).encode()) < report.SUMMARY_LIMIT
    assert gated["candidates"][0] == {"name": "candidate-0", "passed": False, "quality": {"top1": 0.5}, "reason": "x" * 200}
    assert gated["candidatesOmitted"] == 40 - len(gated["candidates"]) > 0


def test_errors_are_one_line() -> None:
    err = InputError("spec.model.uri", "first\n  second\tthird")
    assert err.line == "spec.model.uri: first second third" and err.exit_code == EXIT_INPUT
    assert GateError("x", "y").exit_code == EXIT_GATE
    assert len(one_line("x" * 5000)) == 600
    assert first_line(RuntimeError("The following operation failed in the TorchScript interpreter.\nTraceback...\nRuntimeError: shapes differ")) == "RuntimeError: shapes differ"  # noqa: E501 - a message quoted whole
    assert first_line(RuntimeError("\x1b[96mcoloured\x1b[0m message that is long enough. More text here")) == "coloured message that is long enough"


def _args(tmp_path: Path, **kw: object) -> argparse.Namespace:
    base: dict[str, object] = {"spec": None, "spec_json": None, "name": None, "output": str(tmp_path / "out"),
                               "report_summary": str(tmp_path / "s.json"), "work_dir": None}
    base.update(kw)
    return argparse.Namespace(**base)


def test_main_refuses_a_bad_spec_with_a_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from model_operator.optimize.main import main

    spec = {"model": {"uri": "m.onnx"}, "optimization": {"quantization": {"mode": "static-int8"}}}
    assert main(_args(tmp_path, spec_json=json.dumps(spec))) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == "error: spec.optimization.quantization.mode: static-int8 quantization needs calibration data: set data.calibration"
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["ok"] is False and summary["reason"] == err[len("error: "):]
    assert not (tmp_path / "out").exists()


def test_main_needs_one_spec_source(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from model_operator.optimize.main import main

    assert main(_args(tmp_path)) == 2
    assert capsys.readouterr().err.strip().endswith("error: --spec: give exactly one of --spec FILE or --spec-json JSON")
    assert main(_args(tmp_path, spec_json="{not json")) == 2
    assert "error: --spec-json: not valid JSON" in capsys.readouterr().err


def test_read_spec_accepts_whole_objects(tmp_path: Path) -> None:
    from model_operator.optimize.main import read_spec

    f = tmp_path / "md.yaml"
    f.write_text("apiVersion: serving.model-operator.io/v1alpha1\nkind: ModelDeployment\nmetadata: {name: digits}\nspec:\n  model: {uri: m.onnx}\n")
    spec, meta, base = read_spec(str(f), None)
    assert spec == {"model": {"uri": "m.onnx"}} and meta == {"name": "digits"} and base == tmp_path
    spec, meta, base = read_spec(None, json.dumps({"model": {"uri": "m.onnx"}}))
    assert spec == {"model": {"uri": "m.onnx"}} and meta == {} and base is None

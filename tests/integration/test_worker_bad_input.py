"""Bad input makes the worker exit non-zero with one line `error: <field or file>: <reason>` as
the last line on stderr, the same reason in the summary, and nothing at the destination."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import Digits, EncoderFiles, run_worker

pytestmark = pytest.mark.slow

IO = {"inputs": [{"name": "input", "dtype": "float32", "shape": [-1, 1, 8, 8]}]}


def _spec(model: dict[str, Any], digits: Digits, **extra: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "model": model,
        "data": {"validation": {"uri": str(digits.validation)}},
        "optimization": {"quantization": {"mode": "dynamic-int8"}},
    }
    spec.update(extra)
    return spec


def _custom_op_model(digits: Digits, path: Path) -> Path:
    import onnx
    from onnx import helper

    model = onnx.load(str(digits.onnx))
    out = model.graph.output[0].name
    model.graph.node.append(helper.make_node("Frobnicate", [out], ["frobbed"], domain="com.example.madeup", name="mystery"))
    model.graph.output[0].name = "frobbed"
    model.opset_import.append(helper.make_opsetid("com.example.madeup", 1))
    onnx.save(model, str(path))
    return path


def _truncated(src: Path, dest: Path) -> Path:
    dest.write_bytes(src.read_bytes()[: src.stat().st_size // 3])
    return dest


def _zip_bomb(dest: Path) -> Path:
    """A small zip (about 0.2 MB) whose one member expands to 256 MiB of zeros."""
    import zipfile

    with zipfile.ZipFile(dest, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        with zf.open("archive/data/0", "w", force_zip64=True) as member:
            chunk = bytes(1 << 20)
            for _ in range(256):
                member.write(chunk)
    return dest


def _random(dest: Path) -> Path:
    dest.write_bytes(os.urandom(20_000))
    return dest


CASES: dict[str, tuple[Callable[[Digits, Path], dict[str, Any]], int, str]] = {
    "truncated-torchscript": (
        lambda d, t: _spec({"uri": str(_truncated(d.torchscript, t / "m.pt")), **IO}, d), 2,
        "error: spec.model.uri: {t}/m.pt: not a TorchScript archive",
    ),
    "zip-bomb-torchscript": (
        lambda d, t: _spec({"uri": str(_zip_bomb(t / "m.pt")), **IO}, d), 2,
        "error: spec.model.uri: {t}/m.pt: the archive expands to 268435456 bytes, more than the 67108864-byte limit",
    ),
    "truncated-onnx": (
        lambda d, t: _spec({"uri": str(_truncated(d.onnx, t / "m.onnx"))}, d), 2,
        "error: spec.model.uri: {t}/m.onnx: not a valid ONNX model",
    ),
    "random-bytes": (
        lambda d, t: _spec({"uri": str(_random(t / "m.onnx"))}, d), 2,
        "error: spec.model.uri: {t}/m.onnx: not a valid ONNX model",
    ),
    "random-bytes-no-extension": (
        lambda d, t: _spec({"uri": str(_random(t / "model-file"))}, d), 2,
        "error: spec.model.uri: {t}/model-file: not a valid ONNX model",
    ),
    "unsupported-operator": (
        lambda d, t: _spec({"uri": str(_custom_op_model(d, t / "m.onnx"))}, d), 2,
        "error: spec.model.uri: {t}/m.onnx: unsupported operator com.example.madeup:Frobnicate (node 'mystery')",
    ),
    "onnx-input-name-mismatch": (
        lambda d, t: _spec({"uri": str(d.onnx), "inputs": [{"name": "pixels", "shape": [-1, 1, 8, 8]}]}, d), 2,
        "error: spec.model.inputs[0].name: 'pixels' is not an input of the model",
    ),
    "onnx-shape-mismatch": (
        lambda d, t: _spec({"uri": str(d.onnx), "inputs": [{"name": "input", "shape": [-1, 1, 28, 28]}]}, d), 2,
        "error: spec.model.inputs[0].shape: 'input' axis 2 is 28 in the spec but 8 in the model",
    ),
    "torchscript-signature-mismatch": (
        lambda d, t: _spec({"uri": str(d.torchscript), "inputs": [{"name": "input", "shape": [-1, 1, 28, 28]}]}, d), 2,
        "error: spec.model.inputs: the model fails on inputs shaped like input float32 [-1, 1, 28, 28]",
    ),
    "torchscript-without-signature": (
        lambda d, t: _spec({"uri": str(d.torchscript)}, d), 2,
        "error: spec.model.inputs: a TorchScript model does not carry its input shapes",
    ),
    "static-int8-without-calibration": (
        lambda d, t: _spec({"uri": str(d.onnx)}, d, optimization={"quantization": {"mode": "static-int8"}}), 2,
        "error: spec.optimization.quantization.mode: static-int8 quantization needs calibration data",
    ),
    "missing-calibration-file": (
        lambda d, t: {**_spec({"uri": str(d.onnx)}, d, optimization={"quantization": {"mode": "static-int8"}}),
                      "data": {"validation": {"uri": str(d.validation)}, "calibration": {"uri": str(t / "nope.npz")}}}, 2,
        "error: spec.data.calibration.uri: {t}/nope.npz: no such file",
    ),
    "validation-data-not-npz": (
        lambda d, t: {**_spec({"uri": str(d.onnx)}, d), "data": {"validation": {"uri": str(d.onnx)}}}, 2,
        "error: spec.data.validation.uri: {onnx}: not a readable .npz file",
    ),
    "no-validation-data": (
        lambda d, t: {**_spec({"uri": str(d.onnx)}, d), "data": {}}, 2,
        "error: spec.data.validation: the quality gate needs validation data",
    ),
    "unreachable-uri": (
        lambda d, t: _spec({"uri": "http://127.0.0.1:9/models/m.onnx"}, d), 2,
        "error: spec.model.uri: http://127.0.0.1:9/models/m.onnx: host is unreachable",
    ),
    "quality-gate-rejects": (
        lambda d, t: _spec({"uri": str(d.onnx)}, d, optimization={"pruning": {"method": "magnitude", "sparsity": 0.95},
                                                                  "qualityGate": {"maxTop1Drop": 0.001}}), 3,
        "error: spec.optimization.qualityGate: fp32+magnitude-95 rejected: top-1 dropped",
    ),
    "gradient-pruning-on-onnx": (
        lambda d, t: {**_spec({"uri": str(d.onnx)}, d, optimization={"pruning": {"method": "gradient"}}),
                      "data": {"validation": {"uri": str(d.validation)}, "calibration": {"uri": str(d.calibration)}}}, 2,
        "error: spec.optimization.pruning.method: gradient pruning needs a PyTorch model",
    ),
    "bad-spec": (
        lambda d, t: _spec({"uri": str(d.onnx)}, d, optimization={"quantization": {"mode": "int3"}}), 2,
        "error: spec.optimization.quantization.mode: ",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input(case: str, digits: Digits, tmp_path: Path) -> None:
    build, code, expected = CASES[case]
    spec = build(digits, tmp_path)
    dest = tmp_path / "dest"
    res = run_worker(dest, spec=spec, summary=tmp_path / "summary.json", env={"MODEL_OPERATOR_MAX_UNPACKED_BYTES": str(64 << 20)})
    assert res.rc == code, res.stderr
    assert res.last_line.startswith(expected.format(t=tmp_path, onnx=digits.onnx)), res.last_line
    assert "Traceback" not in res.stderr
    assert not dest.exists(), "nothing at the destination"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == [], "no temporary siblings"
    assert res.summary["ok"] is False
    assert "error: " + res.summary["reason"] == res.last_line
    assert res.summary["exitCode"] == code
    if code == 3:  # the operator shows what was tried in status.optimization.candidates
        assert res.summary["candidates"] and not any(c["passed"] for c in res.summary["candidates"])


def test_bad_encoder_inputs(encoder: EncoderFiles, tmp_path: Path) -> None:
    """A multi-input model: an int64 input declared float32 is refused, naming the field."""
    inputs = [dict(encoder.INPUTS[0]), {**encoder.INPUTS[1], "dtype": "float32"}]
    spec = {
        "model": {"uri": str(encoder.exported), "task": "embedding", "inputs": inputs},
        "data": {"validation": {"uri": str(encoder.validation)}},
        "optimization": {"quantization": {"mode": "dynamic-int8"}},
    }
    res = run_worker(tmp_path / "dest", spec=spec, summary=tmp_path / "s.json")
    assert res.rc == 2
    assert res.last_line == "error: spec.model.inputs[1].dtype: 'attention_mask' is float32 in the spec but int64 in the model"
    assert not (tmp_path / "dest").exists()


def test_missing_array_in_validation_data(encoder: EncoderFiles, tmp_path: Path) -> None:
    import numpy as np

    data = dict(np.load(encoder.validation))
    del data["attention_mask"]
    np.savez(tmp_path / "val.npz", **data)
    spec = {
        "model": {"uri": str(encoder.onnx), "task": "embedding"},
        "data": {"validation": {"uri": str(tmp_path / "val.npz")}},
        "optimization": {"quantization": {"mode": "dynamic-int8"}},
    }
    res = run_worker(tmp_path / "dest", spec=spec, summary=tmp_path / "s.json")
    assert res.rc == 2
    assert res.last_line == f"error: spec.data.validation.uri: {tmp_path}/val.npz: no array 'attention_mask' for model input 'attention_mask' (the file has: input_ids)"  # noqa: E501 - a message quoted whole

"""Golden-probe arithmetic and golden-set reading (no server)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from model_operator.api.types import QualityGate
from model_operator.triton.client import ProbeError, compare, golden_arrays

RNG = np.random.default_rng(0)
LOGITS = RNG.normal(size=(50, 10)).astype(np.float32)


def test_identical_outputs_pass_with_full_agreement() -> None:
    r = compare({"logits": LOGITS}, {"logits": LOGITS.copy()}, QualityGate())
    assert r.passed and r.agreement == 1.0 and r.cosine == pytest.approx(1.0) and r.max_abs_error == 0.0
    assert r.samples == 50
    s = r.summary()
    assert s["ok"] and s["passed"] and s["agreement"] == 1.0 and s["maxAbsError"] == 0.0


def test_flipped_classes_fail_the_top1_budget() -> None:
    got = LOGITS.copy()
    top = got.argmax(1)
    # Swap the winner of 5 of 50 rows: agreement 0.9 < 1 - 0.05.
    for i in range(5):
        got[i, top[i]] = got[i].min() - 1
    r = compare({"logits": LOGITS}, {"logits": got}, {"maxTop1Drop": 0.05, "minCosine": -1})
    assert r.agreement == pytest.approx(0.9)
    assert not r.passed and "top-1 agreement" in r.reason
    assert compare({"logits": LOGITS}, {"logits": got}, {"maxTop1Drop": 0.1, "minCosine": -1}).passed


def test_cosine_and_abs_error_gates() -> None:
    emb = RNG.normal(size=(20, 64))
    noisy = emb + RNG.normal(scale=0.5, size=emb.shape)
    r = compare({"e": emb}, {"e": noisy}, {"minCosine": 0.99}, task="embedding")
    assert r.agreement is None
    assert not r.passed and "cosine" in r.reason
    r = compare({"e": emb}, {"e": emb + 0.01}, {"minCosine": 0.9, "maxAbsError": 0.001}, task="embedding")
    assert not r.passed and "max abs error" in r.reason
    assert compare({"e": emb}, {"e": emb + 0.01}, {"minCosine": 0.9, "maxAbsError": 0.1}, task="embedding").passed


def test_zero_vectors_count_as_equal() -> None:
    z = np.zeros((3, 4), np.float32)
    r = compare({"y": z}, {"y": z}, {}, task="regression")
    assert r.cosine == 1.0 and r.passed


def test_shape_mismatch_fails_with_reason() -> None:
    r = compare({"logits": LOGITS}, {"logits": LOGITS[:, :5]}, {})
    assert not r.passed and "shape" in r.reason


def test_golden_arrays_by_name_and_by_prefix(tmp_path: Path) -> None:
    path = tmp_path / "golden.npz"
    np.savez(path, **{"input_ids": np.ones((4, 8), np.int64), "input:attention_mask": np.ones((4, 8), np.int64),
                      "output:hidden": np.zeros((4, 8, 2)), "labels": np.arange(4)})
    ins, outs = golden_arrays(path, ["input_ids", "attention_mask"], ["hidden"])
    assert sorted(ins) == ["attention_mask", "input_ids"] and list(outs) == ["hidden"]


def test_single_input_may_use_x(tmp_path: Path) -> None:
    ins, outs = golden_arrays({"x": np.ones((2, 3)), "y": np.ones((2, 1))}, ["pixels"], ["y"])
    assert list(ins) == ["pixels"]


@pytest.mark.parametrize(
    "arrays, match",
    [
        ({"y": np.ones((2, 1))}, "input 'a'"),
        ({"a": np.ones((2, 3))}, "output 'y'"),
        ({"a": np.ones((2, 3)), "y": np.ones((3, 1))}, "number of samples"),
    ],
)
def test_golden_set_problems_are_named(arrays: dict[str, np.ndarray], match: str) -> None:
    with pytest.raises(ProbeError, match=match):
        golden_arrays(arrays, ["a", "b"] if match == "input 'a'" else ["a"], ["y"])


def test_unreadable_golden_file(tmp_path: Path) -> None:
    bad = tmp_path / "golden.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(ProbeError, match="golden.npz"):
        golden_arrays(bad, ["a"], ["y"])

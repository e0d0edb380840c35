"""Quality of an optimized model against the original, and the gate.

- classification: top-1 accuracy against `labels` when the validation data has them (the gate
  bounds the drop from the original's top-1), else agreement of the argmax with the original
  (the gate bounds the disagreement with the same budget, `qualityGate.maxTop1Drop`);
- embedding and regression: mean cosine similarity with the original's outputs (bounded below
  by `qualityGate.minCosine`);
- all tasks: max absolute error against the original (bounded by `qualityGate.maxAbsError` when
  set). Metrics are computed on the first output; maxAbsError over every output.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..api.types import QualityGate, Task

EPS = 1e-12


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Mean per-sample cosine similarity (over the whole array when a sample is one scalar)."""
    a = a.reshape(len(a), -1).astype(np.float64)
    b = b.reshape(len(b), -1).astype(np.float64)
    if a.shape[1] == 1:
        a, b = a.reshape(1, -1), b.reshape(1, -1)
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    dot = (a * b).sum(axis=1)
    both_zero = (na < EPS) & (nb < EPS)
    cos = np.where(both_zero, 1.0, dot / np.maximum(na * nb, EPS))
    return float(np.mean(cos))


def max_abs_error(a: Sequence[np.ndarray], b: Sequence[np.ndarray]) -> float:
    return float(max(np.max(np.abs(x.astype(np.float64) - y.astype(np.float64))) if x.size else 0.0 for x, y in zip(a, b)))


def top1(logits: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(logits.reshape(len(logits), -1).argmax(axis=1) == labels))


def reference_quality(task: Task, outputs: Sequence[np.ndarray], labels: np.ndarray | None, targets: np.ndarray | None) -> dict[str, float]:
    """The original model's quality against the data's ground truth (empty without one)."""
    if task == Task.classification and labels is not None:
        return {"top1": top1(outputs[0], labels)}
    if task != Task.classification and targets is not None:
        return {"cosine": cosine(outputs[0], targets), "mse": float(np.mean((outputs[0].reshape(targets.shape) - targets) ** 2))}
    return {}


def compare(task: Task, reference: Sequence[np.ndarray], candidate: Sequence[np.ndarray], labels: np.ndarray | None,
            targets: np.ndarray | None) -> dict[str, float]:
    """The candidate's quality: against the ground truth as in `reference_quality`, plus its
    agreement with the original (argmax agreement for classifiers, cosine, max abs error)."""
    q = reference_quality(task, candidate, labels, targets)
    if task != Task.classification and targets is not None:
        q = {"targetCosine": q["cosine"], "mse": q["mse"]}
    if task == Task.classification:
        ref = reference[0].reshape(len(reference[0]), -1).argmax(axis=1)
        q["agreement"] = float(np.mean(candidate[0].reshape(len(candidate[0]), -1).argmax(axis=1) == ref))
    q["cosine"] = cosine(candidate[0], reference[0])
    q["maxAbsError"] = max_abs_error(candidate, reference)
    return q


@dataclass(frozen=True)
class Verdict:
    passed: bool
    reason: str = ""


def gate(task: Task, before: dict[str, float], after: dict[str, float], g: QualityGate) -> Verdict:
    """Whether `after` (from compare) is within the gate relative to `before` (reference_quality)."""
    tol = 1e-9
    if task == Task.classification:
        if "top1" in before and "top1" in after:
            drop = before["top1"] - after["top1"]
            if drop > g.max_top1_drop + tol:
                return Verdict(False,
                               f"top-1 dropped {drop * 100:.2f} points ({before['top1']:.4f} -> {after['top1']:.4f}), "
                               f"more than qualityGate.maxTop1Drop {g.max_top1_drop * 100:.2f}")
        else:
            disagree = 1.0 - after["agreement"]
            if disagree > g.max_top1_drop + tol:
                return Verdict(False,
                               f"top-1 agrees with the original on {after['agreement'] * 100:.2f}% of samples, "
                               f"below 1 - qualityGate.maxTop1Drop ({(1 - g.max_top1_drop) * 100:.2f}%)")
    elif after["cosine"] < g.min_cosine - tol:
        return Verdict(False, f"cosine similarity {after['cosine']:.5f} is below qualityGate.minCosine {g.min_cosine}")
    if g.max_abs_error is not None and after["maxAbsError"] > g.max_abs_error:
        return Verdict(False, f"max abs error {after['maxAbsError']:.4g} is above qualityGate.maxAbsError {g.max_abs_error}")
    return Verdict(True)

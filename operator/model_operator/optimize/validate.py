"""Quality of an optimized model against the original, and the gate.

- classification: top-1 accuracy against `labels` when the validation data has them (the gate
  bounds the drop from the original's top-1), else agreement of the argmax with the original
  (the gate bounds the disagreement with the same budget, `qualityGate.maxTop1Drop`);
- embedding and regression: mean cosine similarity with the original's outputs (bounded below
  by `qualityGate.minCosine`) and the smallest per-sample cosine (`minCosine`, bounded by
  `qualityGate.minSampleCosine` when set). For embedding models with a token-level output the
  comparison can leave out padding (`qualityGate.maskInput`) and pool the tokens
  (`qualityGate.pooling`: mean over the unmasked tokens, or the first token), which is what users
  of a sentence encoder compare;
- all tasks: max absolute error against the original (bounded by `qualityGate.maxAbsError` when
  set). Metrics are computed on the first output; maxAbsError over every output.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..api.types import Pooling, QualityGate, Task

EPS = 1e-12


@dataclass(frozen=True)
class View:
    """How embedding outputs are compared: `mask` [batch, sequence] (nonzero = a real token) of
    the samples compared, and the pooling of a token-level output [batch, sequence, ...]."""

    mask: np.ndarray | None = None
    pooling: Pooling = Pooling.none

    def subset(self, index: np.ndarray) -> View:
        return View(None if self.mask is None else self.mask[index], self.pooling)

    def apply(self, x: np.ndarray) -> np.ndarray:
        """One row per sample: pooled, or the tokens with padding zeroed."""
        x = x.astype(np.float64)
        m = None
        if self.mask is not None and x.ndim >= 2 and x.shape[:2] == self.mask.shape:
            m = (self.mask != 0).astype(np.float64).reshape(self.mask.shape + (1,) * (x.ndim - 2))
        if self.pooling == Pooling.cls and x.ndim >= 3:
            x = x[:, 0]
        elif self.pooling == Pooling.mean and x.ndim >= 3:
            m = np.ones(x.shape[:2] + (1,) * (x.ndim - 2)) if m is None else m
            x = (x * m).sum(axis=1) / np.maximum(m.sum(axis=1), 1.0)
        elif m is not None:
            x = x * m
        return x.reshape(len(x), -1)


def sample_cosines(a: np.ndarray, b: np.ndarray, view: View | None = None) -> np.ndarray:
    """Cosine similarity per sample (one value over the whole array when a sample is one scalar)."""
    view = view or View()
    a, b = view.apply(a), view.apply(b)
    if a.shape[1] == 1:
        a, b = a.reshape(1, -1), b.reshape(1, -1)
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    dot = (a * b).sum(axis=1)
    both_zero = (na < EPS) & (nb < EPS)
    return np.where(both_zero, 1.0, dot / np.maximum(na * nb, EPS))


def cosine(a: np.ndarray, b: np.ndarray, view: View | None = None) -> float:
    """Mean per-sample cosine similarity (over the whole array when a sample is one scalar)."""
    return float(np.mean(sample_cosines(a, b, view)))


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


def compare(
    task: Task, reference: Sequence[np.ndarray], candidate: Sequence[np.ndarray], labels: np.ndarray | None, targets: np.ndarray | None,
    view: View | None = None,
) -> dict[str, float]:
    """The candidate's quality: against the ground truth as in `reference_quality`, plus its
    agreement with the original (argmax agreement for classifiers, mean and smallest per-sample
    cosine through `view`, max abs error)."""
    q = reference_quality(task, candidate, labels, targets)
    if task != Task.classification and targets is not None:
        q = {"targetCosine": q["cosine"], "mse": q["mse"]}
    if task == Task.classification:
        ref = reference[0].reshape(len(reference[0]), -1).argmax(axis=1)
        q["agreement"] = float(np.mean(candidate[0].reshape(len(candidate[0]), -1).argmax(axis=1) == ref))
    cos = sample_cosines(candidate[0], reference[0], view if task == Task.embedding else None)
    q["cosine"] = float(np.mean(cos))
    if task != Task.classification:
        q["minCosine"] = float(np.min(cos))
    q["maxAbsError"] = max_abs_error(candidate, reference)
    return q


@dataclass(frozen=True)
class Verdict:
    passed: bool
    reason: str = ""


def worst(qualities: Sequence[dict[str, float]]) -> dict[str, float]:
    """Per metric, the worst value over several evaluations (e.g. at several batch sizes)."""
    out = dict(qualities[0])
    for q in qualities[1:]:
        for k, v in q.items():
            if k in ("maxAbsError", "mse"):
                out[k] = max(out.get(k, v), v)
            else:
                out[k] = min(out.get(k, v), v)
    return out


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
    elif g.min_sample_cosine is not None and after.get("minCosine", 1.0) < g.min_sample_cosine - tol:
        return Verdict(False, f"the least similar sample's cosine {after['minCosine']:.5f} is below qualityGate.minSampleCosine {g.min_sample_cosine}")
    if g.max_abs_error is not None and after["maxAbsError"] > g.max_abs_error:
        return Verdict(False, f"max abs error {after['maxAbsError']:.4g} is above qualityGate.maxAbsError {g.max_abs_error}")
    return Verdict(True)

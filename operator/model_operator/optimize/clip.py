"""Weight clipping: limit each weight tensor to [-t, t], with t a fixed threshold or the given
percentile of the tensor's |w|. Applied to torch parameters before export, or to ONNX
initializers. The math is in pure numpy functions (unit-tested)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..api.types import Clipping, ClippingMethod


@dataclass
class ClipStats:
    tensors: int = 0
    values: int = 0
    clipped: int = 0
    thresholds: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, float | int]:
        return {"tensors": self.tensors, "clippedFraction": (self.clipped / self.values) if self.values else 0.0}


def clip_threshold(w: np.ndarray, threshold: float) -> np.ndarray:
    return np.clip(w, -threshold, threshold).astype(w.dtype, copy=False)


def percentile_threshold(w: np.ndarray, percentile: float) -> float:
    if w.size == 0:
        return 0.0
    return float(np.percentile(np.abs(w), percentile))


def clip_array(w: np.ndarray, clipping: Clipping) -> tuple[np.ndarray, float]:
    """(clipped copy of w, threshold used). Method none returns w unchanged (threshold inf)."""
    if clipping.method == ClippingMethod.threshold:
        assert clipping.threshold is not None
        t = float(clipping.threshold)
    elif clipping.method == ClippingMethod.percentile:
        assert clipping.percentile is not None
        t = percentile_threshold(w, clipping.percentile)
    else:
        return w, float("inf")
    return clip_threshold(w, t), t


def clip_named(weights: dict[str, np.ndarray], clipping: Clipping) -> tuple[dict[str, np.ndarray], ClipStats]:
    """Clip every tensor in `weights`; returns the new arrays (only those that changed) and stats."""
    stats = ClipStats()
    changed: dict[str, np.ndarray] = {}
    if clipping.method == ClippingMethod.none:
        return changed, stats
    for name, w in weights.items():
        new, t = clip_array(w, clipping)
        stats.tensors += 1
        stats.values += w.size
        n = int(np.count_nonzero(new != w))
        stats.clipped += n
        stats.thresholds[name] = t
        if n:
            changed[name] = new
    return changed, stats

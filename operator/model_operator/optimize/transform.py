"""Clipping and pruning of a torch module before export (in place, on its parameters)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from ..api.types import Clipping, ClippingMethod, Pruning, PruningMethod, TensorSpec
from .clip import ClipStats, clip_named
from .data import Dataset
from .prune import PruneStats, torch_prunable, torch_prune, torch_saliency

SALIENCY_SAMPLES = 64
SALIENCY_BATCH = 16


def torch_clip(module: Any, clipping: Clipping) -> ClipStats:
    """Clip every floating weight with 2+ dims (embeddings included) in place."""
    import torch

    if clipping.method == ClippingMethod.none:
        return ClipStats()
    params = {n: p for n, p in module.named_parameters() if p.dim() >= 2 and p.is_floating_point()}
    arrays = {n: p.detach().cpu().numpy().copy() for n, p in params.items()}
    changed, stats = clip_named(arrays, clipping)
    with torch.no_grad():
        for n, arr in changed.items():
            params[n].copy_(torch.from_numpy(arr))
    return stats


def _calibration_batches(data: Dataset, inputs: Sequence[TensorSpec], task: str) -> Iterator[tuple[list[Any], Any]]:
    import torch

    sub = data.take(SALIENCY_SAMPLES)
    ref = sub.labels if task == "classification" else sub.targets
    for start in range(0, sub.size, SALIENCY_BATCH):
        args = [torch.from_numpy(np.ascontiguousarray(sub.inputs[t.name][start : start + SALIENCY_BATCH])) for t in inputs]
        r = None if ref is None else torch.from_numpy(np.ascontiguousarray(ref[start : start + SALIENCY_BATCH]))
        yield args, r


def transform_torch(
    module: Any, clipping: Clipping, pruning: Pruning, *, calibration: Dataset | None, inputs: Sequence[TensorSpec], task: str
) -> tuple[ClipStats, PruneStats]:
    """Clip, then prune `module` in place (gradient pruning scores |w * grad| on calibration data)."""
    clip_stats = torch_clip(module, clipping)
    saliency = None
    if pruning.method == PruningMethod.gradient:
        assert calibration is not None, "checked by the plan validation"
        saliency = torch_saliency(module, torch_prunable(module), _calibration_batches(calibration, inputs, task), task)
    prune_stats = torch_prune(module, pruning, saliency=saliency)
    return clip_stats, prune_stats

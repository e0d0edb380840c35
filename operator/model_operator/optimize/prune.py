"""Pruning: magnitude (unstructured L1), gradient/saliency (|w * dL/dw| from calibration data)
and structured (whole output channels by L2 norm).

Torch sources are pruned BEFORE export, with `torch.nn.utils.prune`'s own mask computations
(`L1Unstructured`, which also ranks saliency scores, and `LnStructured` over dim 0), applied to
the parameters in place; this works for TorchScript modules as well as the GraphModule of a
torch.export program. ONNX sources are pruned on their initializers with the numpy functions
below (same definitions; gradient pruning needs a torch source).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..api.types import Pruning, PruningMethod


@dataclass
class PruneStats:
    tensors: int = 0
    values: int = 0
    zeros: int = 0
    per_tensor: dict[str, float] = field(default_factory=dict)

    @property
    def sparsity(self) -> float:
        return self.zeros / self.values if self.values else 0.0

    def add(self, name: str, w: np.ndarray) -> None:
        z = int(np.count_nonzero(w == 0))
        self.tensors += 1
        self.values += w.size
        self.zeros += z
        self.per_tensor[name] = z / w.size if w.size else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"tensors": self.tensors, "sparsity": round(self.sparsity, 4)}


def n_to_prune(size: int, amount: float) -> int:
    """How many of `size` entries a fraction `amount` removes (torch.nn.utils.prune rounds)."""
    return int(round(amount * size))


def magnitude_mask(scores: np.ndarray, amount: float) -> np.ndarray:
    """Boolean keep-mask removing the `amount` fraction of entries with the smallest |score|."""
    flat = np.abs(scores).ravel()
    k = n_to_prune(flat.size, amount)
    keep = np.ones(flat.size, dtype=bool)
    if k > 0:
        idx = np.argpartition(flat, k - 1)[:k]
        keep[idx] = False
    return keep.reshape(scores.shape)


def channel_mask(w: np.ndarray, amount: float, axis: int = 0) -> np.ndarray:
    """Boolean keep-mask removing the `amount` fraction of slices along `axis` with the smallest L2 norm."""
    moved = np.moveaxis(w, axis, 0)
    norms = np.sqrt((moved.reshape(moved.shape[0], -1).astype(np.float64) ** 2).sum(axis=1))
    k = n_to_prune(len(norms), amount)
    keep_ch = np.ones(len(norms), dtype=bool)
    if k > 0:
        keep_ch[np.argsort(norms, kind="stable")[:k]] = False
    mask = np.broadcast_to(keep_ch.reshape((-1,) + (1,) * (moved.ndim - 1)), moved.shape)
    return np.moveaxis(mask, 0, axis).copy()


def prune_array(w: np.ndarray, method: PruningMethod, amount: float, *, axis: int = 0, scores: np.ndarray | None = None) -> np.ndarray:
    if method == PruningMethod.none or amount <= 0:
        return w
    if method == PruningMethod.structured:
        keep = channel_mask(w, amount, axis)
    else:
        keep = magnitude_mask(w if scores is None else scores, amount)
    return np.where(keep, w, np.zeros((), dtype=w.dtype)).astype(w.dtype, copy=False)


# --- torch --------------------------------------------------------------------------------------


def torch_prunable(module: Any) -> dict[str, Any]:
    """{name: parameter} of the weights worth pruning: floating parameters with 2+ dims (Linear,
    Conv, attention projections), not embedding tables."""
    excluded: set[str] = set()
    for mod_name, mod in module.named_modules():
        kind = getattr(mod, "original_name", type(mod).__name__)
        if kind in ("Embedding", "EmbeddingBag"):
            excluded.add(f"{mod_name}.weight" if mod_name else "weight")
    graph = getattr(module, "graph", None)
    if graph is not None and hasattr(graph, "nodes") and not hasattr(module, "_c"):
        for node in graph.nodes:  # torch.fx graph of a torch.export program
            if node.op == "call_function" and "embedding" in str(node.target) and node.args:
                arg = node.args[0]
                if getattr(arg, "op", None) == "get_attr":
                    excluded.add(str(arg.target))
    out = {}
    for name, p in module.named_parameters():
        if p.dim() >= 2 and p.is_floating_point() and name not in excluded:
            out[name] = p
    return out


def torch_saliency(module: Any, params: dict[str, Any], batches: Iterable[tuple[list[Any], Any]], task: str) -> dict[str, Any]:
    """Accumulated |w * dL/dw| per parameter over calibration batches. The loss: cross-entropy
    against labels (or the model's own predictions) for classification; MSE against targets,
    else half the squared output norm, for regression and embeddings."""
    import torch
    import torch.nn.functional as F

    scores = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items()}
    for p in params.values():
        p.requires_grad_(True)
    for args, reference in batches:
        for p in params.values():
            p.grad = None
        with torch.enable_grad():
            out = module(*args)
            out = out[0] if isinstance(out, (tuple, list)) else out
            out = out.float()
            if task == "classification":
                labels = reference if reference is not None else out.detach().argmax(dim=-1)
                loss = F.cross_entropy(out.reshape(-1, out.shape[-1]), labels.reshape(-1).long())
            elif reference is not None:
                loss = F.mse_loss(out, reference.reshape(out.shape).float())
            else:
                loss = 0.5 * out.pow(2).mean()
            loss.backward()
        for n, p in params.items():
            if p.grad is not None:
                scores[n] += (p.detach() * p.grad.detach()).abs().float()
    for p in params.values():
        p.grad = None
    return scores


def torch_prune(module: Any, pruning: Pruning, *, saliency: dict[str, Any] | None = None) -> PruneStats:
    """Prune `module`'s weights in place with torch.nn.utils.prune's mask computations."""
    import torch
    from torch.nn.utils import prune

    stats = PruneStats()
    if pruning.method == PruningMethod.none:
        return stats
    params = torch_prunable(module)
    with torch.no_grad():
        for name, p in params.items():
            ones = torch.ones_like(p)
            if pruning.method == PruningMethod.structured:
                mask = prune.LnStructured(amount=pruning.sparsity, n=2, dim=0).compute_mask(p.detach(), default_mask=ones)
            elif pruning.method == PruningMethod.gradient:
                assert saliency is not None, "gradient pruning needs saliency scores"
                # L1Unstructured on the scores removes the entries of smallest |w * grad|.
                mask = prune.L1Unstructured(amount=pruning.sparsity).compute_mask(saliency[name], default_mask=ones)
            else:
                mask = prune.L1Unstructured(amount=pruning.sparsity).compute_mask(p.detach(), default_mask=ones)
            p.mul_(mask.to(p.dtype))
            stats.add(name, p.detach().cpu().numpy())
    return stats

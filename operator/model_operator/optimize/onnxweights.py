"""Clipping and pruning on the initializers of an ONNX graph (for ONNX sources)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..api.types import Clipping, ClippingMethod, Pruning, PruningMethod
from .clip import ClipStats, clip_named
from .prune import PruneStats, prune_array


@dataclass(frozen=True)
class WeightRef:
    name: str
    channel_axis: int
    embedding: bool


def weight_initializers(model: Any) -> dict[str, WeightRef]:
    """Float initializers with 2+ dims that are the weights of Conv/ConvTranspose/MatMul/Gemm
    (with the axis of their output channels) or the tables of Gather (embeddings)."""
    from onnx import TensorProto

    inits = {i.name: i for i in model.graph.initializer if i.data_type in (TensorProto.FLOAT, TensorProto.FLOAT16) and len(i.dims) >= 2}
    refs: dict[str, WeightRef] = {}
    for node in model.graph.node:
        op = node.op_type
        if op in ("Conv", "ConvTranspose") and len(node.input) > 1 and node.input[1] in inits:
            refs[node.input[1]] = WeightRef(node.input[1], 0 if op == "Conv" else 1, False)
        elif op == "MatMul" and len(node.input) > 1 and node.input[1] in inits:
            refs[node.input[1]] = WeightRef(node.input[1], len(inits[node.input[1]].dims) - 1, False)
        elif op == "Gemm" and len(node.input) > 1 and node.input[1] in inits:
            trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
            refs[node.input[1]] = WeightRef(node.input[1], 0 if trans_b else 1, False)
        elif op == "Gather" and node.input and node.input[0] in inits:
            refs.setdefault(node.input[0], WeightRef(node.input[0], 0, True))
    return refs


def transform_onnx(model: Any, clipping: Clipping, pruning: Pruning) -> tuple[Any, ClipStats, PruneStats]:
    """A copy of `model` with clipping (all weights and embeddings) then pruning (weights, not
    embeddings) applied to its initializers."""
    import onnx
    from onnx import numpy_helper

    out = onnx.ModelProto()
    out.CopyFrom(model)
    clip_stats, prune_stats = ClipStats(), PruneStats()
    if clipping.method == ClippingMethod.none and pruning.method == PruningMethod.none:
        return out, clip_stats, prune_stats
    refs = weight_initializers(out)
    by_name = {i.name: i for i in out.graph.initializer}
    arrays = {n: numpy_helper.to_array(by_name[n]) for n in refs}
    changed, clip_stats = clip_named(arrays, clipping)
    arrays.update(changed)
    touched = set(changed)
    if pruning.method != PruningMethod.none:
        for name, ref in refs.items():
            if ref.embedding:
                continue
            arrays[name] = prune_array(arrays[name], pruning.method, pruning.sparsity, axis=ref.channel_axis)
            prune_stats.add(name, arrays[name])
            touched.add(name)
    for name in touched:
        by_name[name].CopyFrom(numpy_helper.from_array(arrays[name].astype(arrays[name].dtype), name))
    return out, clip_stats, prune_stats

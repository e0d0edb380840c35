"""Attention-head pruning (optimize/heads.py) on tiny encoders built here and exported to ONNX:
one whose reshapes name the head count as a constant, a BERT (transformers, random weights)
whose reshapes use -1 and Shape ops like the pretrained MiniLM's export. References come from
the torch model with the removed heads masked, not from the pruner."""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch

from model_operator.optimize.heads import find_blocks, ort_check, prune_heads
from model_operator.optimize.runtime import OrtRunner
from model_operator.optimize.shrink import ort_sampler, shrink

nn = torch.nn
H, HEADS, FF = 32, 4, 64


class Block(nn.Module):
    """Post-norm encoder block; `split` reshapes to [b, t, HEADS, d] (a constant head count);
    `fused` computes Q, K, V with one Linear; `softmax_dim` 1 mixes the heads."""

    def __init__(self, fused: bool = False, softmax_dim: int = -1) -> None:
        super().__init__()
        self.fused, self.softmax_dim = fused, softmax_dim
        self.qkv = nn.Linear(H, 3 * H)
        self.q, self.k, self.v, self.o = (nn.Linear(H, H) for _ in range(4))
        self.n1, self.n2 = nn.LayerNorm(H), nn.LayerNorm(H)
        self.f1, self.f2 = nn.Linear(H, FF), nn.Linear(FF, H)

    def forward(self, x: Any) -> Any:
        b, t, _ = x.shape
        d = H // HEADS
        if self.fused:
            q, k, v = self.qkv(x).view(b, t, 3, HEADS, d).permute(2, 0, 3, 1, 4)
        else:
            q, k, v = (y.view(b, t, HEADS, d).transpose(1, 2) for y in (self.q(x), self.k(x), self.v(x)))
        att = torch.softmax(q @ k.transpose(-1, -2) / d**0.5, self.softmax_dim) @ v
        x = self.n1(x + self.o(att.transpose(1, 2).reshape(b, t, H)))
        return self.n2(x + self.f2(nn.functional.gelu(self.f1(x))))


class Encoder(nn.Module):
    def __init__(self, **kw: Any) -> None:
        super().__init__()
        self.emb = nn.Embedding(50, H)
        self.blocks = nn.Sequential(Block(**kw), Block(**kw))

    def forward(self, ids: Any) -> Any:
        return self.blocks(self.emb(ids))


def export(module: Any, args: tuple[Any, ...], names: list[str]) -> Any:
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = Path(tmp) / "m.onnx"
        torch.onnx.export(module.eval(), args, str(path), dynamo=False, input_names=names, output_names=["y"], opset_version=17,
                          dynamic_axes={**{n: {0: "batch", 1: "sequence"} for n in names}, "y": {0: "batch", 1: "sequence"}})
        return onnx.load(str(path))


def n_params(model: Any) -> int:
    return int(sum(int(np.prod(i.dims)) if i.dims else 1 for i in model.graph.initializer))


def masked_reference(module: Any, outs: list[Any], kept: list[list[int]], feeds: tuple[Any, ...]) -> np.ndarray:
    """The torch module's output with every head not in `kept` masked out of its block's output
    projection `outs[i]` (a Linear): its weight columns zeroed, its mean contribution over the
    sample tokens (taken by a hook on the unmasked module, in torch) added to the bias. Changes
    `module`."""
    d = H // HEADS
    ctx: dict[int, Any] = {}
    hooks = [o.register_forward_hook(lambda m, inp, out, i=i: ctx.__setitem__(i, inp[0].detach().reshape(-1, H))) for i, o in enumerate(outs)]
    with torch.no_grad():
        module(*feeds)
        for hk in hooks:
            hk.remove()
        for i, (o, keep) in enumerate(zip(outs, kept)):
            gone = [c for h in range(HEADS) if h not in keep for c in range(h * d, (h + 1) * d)]
            o.bias += (ctx[i][:, gone] @ o.weight[:, gone].T).mean(0)
            o.weight[:, gone] = 0.0
        return module(*feeds).numpy()


@pytest.fixture(scope="module")
def ids() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 50, (16, 10)).astype(np.int64)


@pytest.mark.parametrize("shared", [False, True])
def test_constant_head_count_blocks_are_found_and_pruned_like_the_masked_torch_model(ids: np.ndarray, shared: bool) -> None:
    """view(b, t, 4, 8) and reshape(b, t, 32) name the head count: the constants are rewritten
    (in place, or, where the three splits of block 0 share one, in a fresh copy per split)."""
    torch.manual_seed(0)
    enc = Encoder()
    model = export(enc, (torch.from_numpy(ids[:2]),), ["x"])
    blocks, left = find_blocks(model)
    assert len(blocks) == 2 and left == 0 and all(b.heads == HEADS and b.dim == H // HEADS for b in blocks)
    assert all(sorted(r.kind for r in b.rewrites) == ["heads"] * 3 + ["width"] for b in blocks)
    fresh = 0
    if shared:
        splits = [r for r in blocks[0].rewrites if r.kind == "heads"]
        for r in splits[1:]:
            r.node.input[r.index] = splits[0].node.input[splits[0].index]
        fresh = 3
        assert len(find_blocks(model)[0]) == 2
    feeds = {"x": ids}
    out, stats = prune_heads(model, 0.25, ort_sampler(feeds), ort_check(feeds))
    assert stats.removed == 2 and not stats.refused and all(len(k) >= 1 for k in stats.kept.values())
    onnx.checker.check_model(out, full_check=True)
    # Each head: 3 x (32 x 8 weights + 8 biases) in Q/K/V and 8 x 32 rows of the output projection.
    assert n_params(model) - n_params(out) == 2 * (3 * (H * 8 + 8) + 8 * H) - fresh
    got = OrtRunner(out.SerializeToString(), level="all").run(feeds)[0]
    kept = [stats.kept[b.name] for b in blocks]
    ref = masked_reference(enc, [blk.o for blk in enc.blocks], kept, (torch.from_numpy(ids),))
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)
    assert OrtRunner(out.SerializeToString(), level="all").run({"x": ids[:3, :7]})[0].shape == (3, 7, H), "dynamic axes still work"


def test_torch_export_shares_one_shape_among_all_blocks_and_each_block_gets_its_own(ids: np.ndarray) -> None:
    """torch.export (dynamo) writes one Concat for every split reshape of the model and one for
    both merges: a block that loses heads gets its own copies, the other block keeps its count."""
    torch.manual_seed(6)
    enc = Encoder()
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = Path(tmp) / "m.onnx"
        batch, seq = torch.export.Dim("batch"), torch.export.Dim("seq", max=64)
        torch.onnx.export(enc.eval(), (torch.from_numpy(ids[:2]),), str(path), dynamo=True, dynamic_shapes=({0: batch, 1: seq},),
                          opset_version=18, external_data=False, verbose=False)
        model = onnx.load(str(path))
    blocks, _ = find_blocks(model)
    assert len(blocks) == 2 and all(r.readers for b in blocks for r in b.rewrites), "the shapes are shared: cloned per block"
    feeds = {model.graph.input[0].name: ids}
    out, stats = prune_heads(model, 0.25, ort_sampler(feeds), ort_check(feeds))
    assert stats.removed == 2 and not stats.refused
    onnx.checker.check_model(out, full_check=True)
    got = OrtRunner(out.SerializeToString(), level="all").run(feeds)[0]
    ref = masked_reference(enc, [blk.o for blk in enc.blocks], [stats.kept[b.name] for b in blocks], (torch.from_numpy(ids),))
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)
    assert OrtRunner(out.SerializeToString()).run({model.graph.input[0].name: ids[:3, :5]})[0].shape == (3, 5, H)


def test_bert_blocks_with_computed_shapes_prune_like_the_masked_torch_model(ids: np.ndarray) -> None:
    from transformers import BertConfig, BertModel

    torch.manual_seed(1)
    cfg = BertConfig(vocab_size=50, hidden_size=H, num_hidden_layers=2, num_attention_heads=HEADS, intermediate_size=FF,
                     max_position_embeddings=32)
    bert = BertModel(cfg, add_pooling_layer=False).eval()
    with torch.no_grad():  # BERT starts with zero biases, which the exporter would share as one initializer
        for name, p in bert.named_parameters():
            if name.endswith("bias"):
                p.normal_(0.0, 0.1)

    class Tokens(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            return self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    mask = np.ones_like(ids)
    mask[8:, 6:] = 0  # padded sentences: the attention mask enters every block
    tokens = Tokens().eval()
    model = export(tokens, (torch.from_numpy(ids[:2]), torch.from_numpy(mask[:2])), ["input_ids", "attention_mask"])
    blocks, left = find_blocks(model)
    assert len(blocks) == 2 and left == 0
    assert all(not b.rewrites for b in blocks), "this export reshapes with -1 and Shape ops: no constant to rewrite"
    feeds = {"input_ids": ids, "attention_mask": mask}
    out, stats = shrink(model, 0.25, sample=ort_sampler(feeds), check=ort_check(feeds))
    report = stats.as_dict()
    assert report["headsRemoved"] == 2 and report["heads"] == 8 and report["attentionBlocks"] == 2
    assert sorted(report["headsKeptPerLayer"].values()) in (["2/4", "4/4"], ["3/4", "3/4"])
    assert stats.removed == round(0.25 * 2 * FF), "the FFN rows go too, on the head-pruned graph"
    assert stats.params_after == n_params(out) < n_params(model)
    # Heads alone (no FFN rows), against torch with those heads masked.
    heads_only, hs = shrink(model, 0.0, heads_amount=0.25, sample=ort_sampler(feeds), check=ort_check(feeds))
    assert hs.removed == 0 and hs.heads.removed == 2
    got = OrtRunner(heads_only.SerializeToString(), level="all").run(feeds)[0]
    layers = bert.encoder.layer
    ref = masked_reference(tokens, [lay.attention.output.dense for lay in layers], [hs.heads.kept[b.name] for b in blocks],
                           (torch.from_numpy(ids), torch.from_numpy(mask)))
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)


def test_a_dead_head_goes_first_and_the_output_is_unchanged(ids: np.ndarray) -> None:
    """A head whose values are zero contributes nothing: it has the lowest score, goes at the
    smallest amount, and the pruned graph computes what the original does."""
    torch.manual_seed(2)
    enc = Encoder()
    d = H // HEADS
    with torch.no_grad():
        blk = enc.blocks[1]
        assert isinstance(blk, Block)
        blk.v.weight[2 * d : 3 * d] = 0.0
        blk.v.bias[2 * d : 3 * d] = 0.0
    model = export(enc, (torch.from_numpy(ids[:2]),), ["x"])
    feeds = {"x": ids}
    out, stats = prune_heads(model, 1 / (2 * HEADS), ort_sampler(feeds), ort_check(feeds))
    assert stats.removed == 1 and list(stats.kept.values())[1] == [0, 1, 3]
    np.testing.assert_allclose(OrtRunner(out.SerializeToString()).run(feeds)[0], enc(torch.from_numpy(ids)).detach().numpy(), rtol=1e-4, atol=1e-4)


def test_a_fused_qkv_projection_is_not_recognized_and_the_graph_is_unchanged(ids: np.ndarray) -> None:
    torch.manual_seed(3)
    model = export(Encoder(fused=True), (torch.from_numpy(ids[:2]),), ["x"])
    assert find_blocks(model)[0] == []
    feeds = {"x": ids}
    out, stats = prune_heads(model, 0.5, ort_sampler(feeds), ort_check(feeds))
    assert stats.blocks == 0 and stats.removed == 0
    assert out.SerializeToString() == model.SerializeToString()


def test_a_block_the_pattern_misreads_is_refused_by_the_check(ids: np.ndarray) -> None:
    """Softmax over the head axis ties the heads together: the pattern matches, but the sliced
    graph no longer computes the head-masked original, so no head is removed."""
    torch.manual_seed(4)
    model = export(Encoder(softmax_dim=1), (torch.from_numpy(ids[:2]),), ["x"])
    assert len(find_blocks(model)[0]) == 2
    feeds = {"x": ids}
    out, stats = prune_heads(model, 0.25, ort_sampler(feeds), ort_check(feeds))
    assert stats.removed == 0 and "differs" in stats.refused
    assert out.SerializeToString() == model.SerializeToString()


def test_without_samples_no_head_is_removed(ids: np.ndarray) -> None:
    torch.manual_seed(5)
    model = export(Encoder(), (torch.from_numpy(ids[:2]),), ["x"])
    out, stats = shrink(model, 0.25)
    assert stats.heads.blocks == 2 and stats.heads.removed == 0 and "no sample" in stats.heads.refused
    assert stats.as_dict()["headsLeftWhole"] == stats.heads.refused and stats.removed == round(0.25 * 2 * FF)

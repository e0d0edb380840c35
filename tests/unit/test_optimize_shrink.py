"""Structured pruning that shrinks the ONNX graph (optimize/shrink.py) on small real torch models
exported to ONNX: a CNN with a residual add and a depthwise conv, and a tiny transformer
encoder; plus the compressed transfer size of edge/device packages."""

from __future__ import annotations

import tarfile
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch

from model_operator.optimize.runtime import OrtRunner
from model_operator.optimize.shrink import choose, find_groups, ort_sampler, shrink

nn = torch.nn


class SmallCNN(nn.Module):
    """conv1 -> relu -> conv2 (a group: channels flow into conv2 only); conv2 -> pool -> a residual
    add with conv3 (tied: left whole); a depthwise conv (grouped: left whole); fc1 -> fc2."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(1, 16, 3, padding=1)
        self.c2 = nn.Conv2d(16, 32, 3, padding=1)
        self.c3 = nn.Conv2d(32, 32, 3, padding=1)
        self.dw = nn.Conv2d(32, 32, 3, padding=1, groups=32)
        self.fc1 = nn.Linear(32 * 4 * 4, 64)
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x: Any) -> Any:
        x = torch.relu(self.c1(x))
        x = torch.max_pool2d(torch.relu(self.c2(x)), 2)
        x = x + torch.relu(self.c3(x))
        x = torch.relu(self.dw(x))
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


class Block(nn.Module):
    def __init__(self, h: int = 32, heads: int = 4, ff: int = 128) -> None:
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v, self.o = (nn.Linear(h, h) for _ in range(4))
        self.n1, self.n2 = nn.LayerNorm(h), nn.LayerNorm(h)
        self.f1, self.f2 = nn.Linear(h, ff), nn.Linear(ff, h)

    def forward(self, x: Any) -> Any:
        b, t, h = x.shape
        d = h // self.heads

        def split(y: Any) -> Any:
            return y.view(b, t, self.heads, d).transpose(1, 2)

        att = torch.softmax(split(self.q(x)) @ split(self.k(x)).transpose(-1, -2) / d**0.5, -1) @ split(self.v(x))
        x = self.n1(x + self.o(att.transpose(1, 2).reshape(b, t, h)))
        return self.n2(x + self.f2(nn.functional.gelu(self.f1(x))))


class TinyEncoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(50, 32)
        self.blocks = nn.Sequential(Block(), Block())

    def forward(self, ids: Any) -> Any:
        return self.blocks(self.emb(ids))


def export(module: Any, example: Any, dynamic: dict[int, str]) -> Any:
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = Path(tmp) / "m.onnx"
        torch.onnx.export(module.eval(), (example,), str(path), dynamo=False, input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": dynamic, "y": {0: "batch"}}, opset_version=17)
        return onnx.load(str(path))


def run(model: Any, x: np.ndarray) -> np.ndarray:
    return OrtRunner(model.SerializeToString(), level="all", n_threads=1).run({"x": x})[0]


def n_params(model: Any) -> int:
    return int(sum(int(np.prod(i.dims)) if i.dims else 1 for i in model.graph.initializer))


@pytest.fixture(scope="module")
def cnn() -> tuple[Any, np.ndarray]:
    torch.manual_seed(0)
    x = np.random.default_rng(0).standard_normal((16, 1, 8, 8)).astype(np.float32)
    return export(SmallCNN(), torch.from_numpy(x[:2]), {0: "batch"}), x


@pytest.fixture(scope="module")
def encoder() -> tuple[Any, np.ndarray]:
    torch.manual_seed(0)
    ids = np.random.default_rng(0).integers(0, 50, (8, 12)).astype(np.int64)
    return export(TinyEncoder(), torch.from_numpy(ids[:2]), {0: "batch", 1: "sequence"}), ids


def test_cnn_groups_skip_residual_and_depthwise(cnn: tuple[Any, np.ndarray]) -> None:
    model, _ = cnn
    groups, skipped = find_groups(model)
    by_weight = {g.weight: g for g in groups}
    producers = {g.producer.op_type: 0 for g in groups}
    assert set(producers) == {"Conv", "Gemm"}
    assert len(groups) == 2 and skipped == 3, "conv2 and conv3 meet at a residual add, dw is grouped: left whole"
    conv = next(g for g in by_weight.values() if g.producer.op_type == "Conv")
    assert conv.channels == 16 and [c.node.op_type for c in conv.consumers] == ["Conv"]
    fc = next(g for g in by_weight.values() if g.producer.op_type == "Gemm")
    assert fc.channels == 64 and [c.node.op_type for c in fc.consumers] == ["Gemm"]


def test_cnn_shrinks_file_and_parameters_and_still_runs(cnn: tuple[Any, np.ndarray]) -> None:
    model, x = cnn
    out, stats = shrink(model, 0.4, sample=ort_sampler({"x": x}))
    onnx.checker.check_model(out, full_check=True)
    assert stats.removed == round(0.4 * (16 + 64)) and stats.data_aware
    assert n_params(out) == stats.params_after < stats.params_before == n_params(model)
    assert len(out.SerializeToString()) < 0.85 * len(model.SerializeToString())
    for batch in (1, 5):
        y = run(out, x[:batch])
        assert y.shape == (batch, 10) and np.isfinite(y).all()


def test_dead_channels_go_first_and_the_output_is_unchanged() -> None:
    """Channels that are zero on every sample (ReLU of a very negative bias) contribute nothing:
    the activation-scored shrink removes exactly them, and the outputs stay the same."""
    torch.manual_seed(1)
    m = SmallCNN()
    dead = [1, 4, 9, 13]
    with torch.no_grad():
        assert m.c1.bias is not None and m.fc1.bias is not None
        m.c1.weight[dead] = 0.0
        m.c1.bias[dead] = -5.0
        m.fc1.bias.fill_(5.0)  # every fc1 unit alive: only conv1's dead channels can go for free
    x = np.random.default_rng(2).standard_normal((16, 1, 8, 8)).astype(np.float32)
    model = export(m, torch.from_numpy(x[:2]), {0: "batch"})
    out, stats = shrink(model, len(dead) / (16 + 64), sample=ort_sampler({"x": x}))
    assert stats.removed == len(dead) and stats.as_dict()["keptPerLayer"] == {"/c1/Conv": "12/16", "/fc1/Gemm": "64/64"}
    conv1 = {i.name: i for i in out.graph.initializer}[next(n.input[1] for n in out.graph.node if n.name == "/c1/Conv")]
    assert list(conv1.dims)[0] == 12
    np.testing.assert_allclose(run(out, x), run(model, x), rtol=1e-5, atol=1e-5)


def test_a_constant_channel_goes_into_the_next_bias() -> None:
    """fc1 units with zero weights and a positive bias put out a constant: no spread, score 0.
    They go first, their constant folded into fc2's bias, and the outputs stay the same; without
    that compensation the outputs would move."""
    torch.manual_seed(3)
    m = SmallCNN()
    const = [2, 7, 30]
    with torch.no_grad():
        assert m.fc1.bias is not None
        m.fc1.weight[const] = 0.0
        m.fc1.bias[const] = 3.0
    x = np.random.default_rng(4).standard_normal((16, 1, 8, 8)).astype(np.float32)
    model = export(m, torch.from_numpy(x[:2]), {0: "batch"})
    out, stats = shrink(model, len(const) / (16 + 64), sample=ort_sampler({"x": x}))
    assert stats.per_group["/fc1/Gemm"] == "61/64" and stats.compensated >= 1
    np.testing.assert_allclose(run(out, x), run(model, x), rtol=1e-4, atol=1e-4)
    fc2_bias = next(n.input[2] for n in out.graph.node if n.name == "/fc2/Gemm")
    before = {i.name: i for i in model.graph.initializer}[fc2_bias]
    after = {i.name: i for i in out.graph.initializer}[fc2_bias]
    assert not np.allclose(onnx.numpy_helper.to_array(before), onnx.numpy_helper.to_array(after)), "the constant moved into the bias"


def test_transformer_loses_ffn_rows_not_attention(encoder: tuple[Any, np.ndarray]) -> None:
    model, ids = encoder
    groups, _ = find_groups(model)
    assert [g.channels for g in groups] == [128, 128], "one FFN per block; q/k/v/o feed reshapes and residuals"
    out, stats = shrink(model, 0.25, sample=ort_sampler({"x": ids}))
    onnx.checker.check_model(out, full_check=True)
    assert stats.removed == 64
    # Each FFN row: a column of W1 (32), its bias (1) and a row of W2 (32).
    assert stats.params_before - stats.params_after == 64 * (32 + 1 + 32) == n_params(model) - n_params(out)
    ref, got = run(model, ids), run(out, ids)
    assert got.shape == ref.shape
    cos = (ref * got).sum(-1) / (np.linalg.norm(ref, axis=-1) * np.linalg.norm(got, axis=-1))
    assert cos.mean() > 0.9, "a quarter of the FFN rows, lowest scores first: close, not equal"
    assert run(out, ids[:3, :5]).shape == (3, 5, 32), "dynamic batch and sequence still work"
    # The scores matter: removing the highest-scored rows instead (scores inverted) strays further.
    inverted, _ = shrink(model, 0.25, sample=lambda m, names: {n: 1 / (np.abs(v) + 1e-3) for n, v in ort_sampler({"x": ids})(m, names).items()})
    worse = run(inverted, ids)
    cos_w = (ref * worse).sum(-1) / (np.linalg.norm(ref, axis=-1) * np.linalg.norm(worse, axis=-1))
    assert cos_w.mean() < cos.mean()


def test_amount_zero_is_the_same_graph(encoder: tuple[Any, np.ndarray]) -> None:
    model, ids = encoder
    out, stats = shrink(model, 0.0)
    assert stats.removed == 0 and n_params(out) == n_params(model)
    np.testing.assert_array_equal(run(out, ids), run(model, ids))


def test_choose_bounds_the_ratio_and_keeps_a_floor() -> None:
    flat = np.ones(8)
    skew = np.array([0.01, 0.01, 0.01, 0.01, 1.0, 1.0, 1.0, 1.0]) * 10
    keep = choose([flat, skew], 0.25)
    assert sum(int((~k).sum()) for k in keep) == 4
    assert keep[0].all() and not keep[1][:4].any(), "the group with near-useless channels loses them"
    keep = choose([np.arange(1, 9, dtype=float)], 0.95)
    assert keep[0].sum() == 2 and keep[0][-2:].all(), "each group keeps MIN_KEEP of its channels, the best ones"


def test_compressed_archive_round_trip_and_sparsity_pays(tmp_path: Path) -> None:
    from model_operator.optimize.pipeline import gzip_size
    from model_operator.storage.digest import MARKER
    from model_operator.storage.presigned import _extract, write_archive

    src = tmp_path / "art"
    (src / "repository" / "m" / "1").mkdir(parents=True)
    dense = np.random.default_rng(0).standard_normal(50_000).astype(np.float32)
    sparse = dense.copy()
    sparse[np.argsort(np.abs(dense))[:25_000]] = 0.0
    (src / "repository" / "m" / "1" / "model.onnx").write_bytes(sparse.tobytes())
    (src / MARKER).write_text("{}\n")
    plain = write_archive(src, tmp_path / "a.tar")
    packed = write_archive(src, tmp_path / "a.tar.gz", compress=True)
    assert packed < 0.75 * plain
    with tarfile.open(tmp_path / "a.tar.gz", "r:gz") as tar:
        assert tar.getnames()[-1] == MARKER
    _extract(tmp_path / "a.tar.gz", tmp_path / "out", "test")
    assert (tmp_path / "out" / "repository" / "m" / "1" / "model.onnx").read_bytes() == sparse.tobytes()
    d, s = tmp_path / "dense.bin", tmp_path / "sparse.bin"
    d.write_bytes(dense.tobytes())
    s.write_bytes(sparse.tobytes())
    assert gzip_size(s) < 0.7 * gzip_size(d) and gzip_size(d) > 0.85 * d.stat().st_size

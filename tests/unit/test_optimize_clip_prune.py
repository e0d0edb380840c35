"""Clipping and pruning math (numpy), torch.nn.utils.prune-based pruning of real modules, and
pruning of ONNX initializers."""

from __future__ import annotations

import numpy as np
import pytest

from model_operator.api.types import Clipping, Pruning, PruningMethod
from model_operator.optimize.clip import clip_array, clip_named, percentile_threshold
from model_operator.optimize.prune import channel_mask, magnitude_mask, n_to_prune, prune_array


def test_threshold_clipping() -> None:
    w = np.array([-3.0, -0.5, 0.0, 0.2, 2.5], dtype=np.float32)
    out, t = clip_array(w, Clipping(method="threshold", threshold=1.0))
    assert t == 1.0 and out.dtype == np.float32
    np.testing.assert_array_equal(out, np.array([-1.0, -0.5, 0.0, 0.2, 1.0], dtype=np.float32))


def test_percentile_clipping_bounds_the_tail() -> None:
    rng = np.random.default_rng(0)
    w = rng.standard_normal(10_000).astype(np.float32)
    out, t = clip_array(w, Clipping(method="percentile", percentile=99.0))
    assert t == pytest.approx(np.percentile(np.abs(w), 99.0))
    assert np.max(np.abs(out)) == pytest.approx(t)
    assert np.mean(np.abs(w) > t) == pytest.approx(0.01, abs=0.002)
    assert percentile_threshold(np.zeros(0), 99) == 0.0


def test_clip_named_stats() -> None:
    changed, stats = clip_named({"a": np.array([1.0, 5.0]), "b": np.array([0.1, 0.2])}, Clipping(method="threshold", threshold=2.0))
    assert set(changed) == {"a"} and stats.tensors == 2 and stats.clipped == 1
    assert stats.as_dict()["clippedFraction"] == 0.25
    assert clip_named({"a": np.ones(3)}, Clipping())[1].tensors == 0


@pytest.mark.parametrize("amount", [0.0, 0.1, 0.5, 0.95])
def test_magnitude_mask_sparsity(amount: float) -> None:
    w = np.random.default_rng(1).standard_normal((64, 33))
    keep = magnitude_mask(w, amount)
    assert (~keep).sum() == n_to_prune(w.size, amount)
    if amount:
        assert np.abs(w[~keep]).max() <= np.abs(w[keep]).min(), "the smallest magnitudes go"


def test_saliency_scores_choose_what_goes() -> None:
    w = np.array([1.0, 2.0, 3.0, 4.0])
    scores = np.array([4.0, 3.0, 2.0, 1.0])
    np.testing.assert_array_equal(prune_array(w, PruningMethod.gradient, 0.5, scores=scores), [1.0, 2.0, 0.0, 0.0])


def test_channel_mask_removes_whole_channels() -> None:
    w = np.ones((8, 3, 3, 3))
    w[2] *= 0.1
    w[5] *= 0.2
    keep = channel_mask(w, 0.25, axis=0)
    removed = [c for c in range(8) if not keep[c].any()]
    assert removed == [2, 5] and all(keep[c].all() for c in range(8) if c not in removed)
    # MatMul weights [in, out]: channels are columns.
    m = np.ones((4, 10))
    m[:, 7] = 0.01
    keep = channel_mask(m, 0.1, axis=1)
    assert not keep[:, 7].any() and keep[:, :7].all()


def _tiny_module():  # noqa: ANN202
    import torch
    from torch import nn

    torch.manual_seed(0)
    return nn.Sequential(nn.Embedding(10, 8), nn.Flatten(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 3)).eval()


def test_torch_magnitude_pruning_on_a_scripted_module() -> None:
    import torch

    from model_operator.optimize.prune import torch_prunable, torch_prune

    scripted = torch.jit.trace(_tiny_module(), torch.zeros(2, 2, dtype=torch.long))
    assert set(torch_prunable(scripted)) == {"2.weight", "4.weight"}, "embeddings are not pruned"
    stats = torch_prune(scripted, Pruning(method="magnitude", sparsity=0.5))
    assert stats.tensors == 2 and stats.sparsity == pytest.approx(0.5, abs=0.01)
    assert float((scripted.state_dict()["2.weight"] == 0).float().mean()) == pytest.approx(0.5, abs=0.01)


def test_torch_structured_pruning_zeroes_output_channels() -> None:
    from model_operator.optimize.prune import torch_prune

    module = _tiny_module()
    torch_prune(module, Pruning(method="structured", sparsity=0.25))
    rows = (module[2].weight == 0).all(dim=1)
    assert int(rows.sum()) == 3  # 25% of 12 output channels


def test_torch_gradient_pruning_uses_saliency() -> None:
    import torch

    from model_operator.optimize.prune import torch_prunable, torch_prune, torch_saliency

    module = _tiny_module()
    params = torch_prunable(module)
    batches = [([torch.randint(0, 10, (16, 2))], None)]
    scores = torch_saliency(module, params, batches, "classification")
    assert set(scores) == set(params) and all(float(s.sum()) > 0 for s in scores.values())
    stats = torch_prune(module, Pruning(method="gradient", sparsity=0.3), saliency=scores)
    assert stats.sparsity == pytest.approx(0.3, abs=0.02)
    pruned = module[2].weight.detach() == 0
    assert float(scores["2.weight"][pruned].max()) <= float(scores["2.weight"][~pruned].min())


def test_onnx_initializer_pruning_and_clipping() -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from model_operator.optimize.onnxweights import transform_onnx, weight_initializers

    rng = np.random.default_rng(0)
    w = rng.standard_normal((8, 4)).astype(np.float32)
    table = rng.standard_normal((5, 8)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "ids"], ["e"]), helper.make_node("MatMul", ["e", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, [None])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 4])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(table, "table")],
    )
    model = helper.make_model(graph)
    refs = weight_initializers(model)
    assert refs["w"].channel_axis == 1 and not refs["w"].embedding and refs["table"].embedding
    out, clip_stats, prune_stats = transform_onnx(model, Clipping(method="threshold", threshold=1.0), Pruning(method="magnitude", sparsity=0.5))
    arrays = {i.name: numpy_helper.to_array(i) for i in out.graph.initializer}
    assert np.abs(arrays["w"]).max() <= 1.0 and np.abs(arrays["table"]).max() <= 1.0
    assert (arrays["w"] == 0).mean() == 0.5 and (arrays["table"] == 0).mean() < 0.5
    assert prune_stats.tensors == 1 and clip_stats.tensors == 2
    assert np.abs(numpy_helper.to_array(model.graph.initializer[0])).max() > 1.0, "the source model is not modified"
    onnx.checker.check_model(out)

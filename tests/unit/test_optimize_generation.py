"""The pure parts of the generation worker (optimize/generation.py): candidate plans, perplexity
from logits, greedy agreement, the gate's verdict, held-out windows and prompts."""

from __future__ import annotations

import math

import numpy as np
import pytest

from model_operator.api.types import Optimization, QualityGate
from model_operator.optimize import generation as lm
from model_operator.optimize.errors import InputError


def _opt(mode: str = "none", search: bool = False, **search_kw: object) -> Optimization:
    return Optimization.model_validate({"quantization": {"mode": mode}, "search": {"enabled": search, **search_kw}})


@pytest.mark.parametrize(
    "mode,search,names,precisions",
    [
        ("none", False, ["fp32"], ["fp32"]),
        ("int8-weight-only", False, ["int8-weight-only"], ["int8"]),
        ("int4-weight-only", False, ["int4-weight-only"], ["int4"]),
        ("none", True, ["fp32", "int8-weight-only", "int4-weight-only", "int4-weight-only-embeddings"], ["fp32", "int8", "int4", "int4"]),
        ("int8-weight-only", True, ["int8-weight-only", "int4-weight-only", "int4-weight-only-embeddings"], ["int8", "int4", "int4"]),
        ("int4-weight-only", True, ["int4-weight-only", "int4-weight-only-block128", "int4-weight-only-embeddings"], ["int4", "int4", "int4"]),
    ],
)
def test_plans_never_trade_away_the_size_the_spec_asks_for(mode: str, search: bool, names: list[str], precisions: list[str]) -> None:
    plans = lm.generation_plans(_opt(mode, search))
    assert [p.plan.name for p in plans] == names
    assert [p.precision for p in plans] == precisions
    assert all((p.block_size is None) == (p.precision == "fp32") for p in plans)
    assert [p.embeddings for p in plans] == [n.endswith("-embeddings") for n in names]
    assert all(p.plan.describe().get("opTypes") == (["MatMul", "Gather"] if p.embeddings else None) for p in plans)


def test_plans_are_capped_and_refuse_what_cannot_apply() -> None:
    assert len(lm.generation_plans(_opt("none", True, maxCandidates=2))) == 2
    with pytest.raises(InputError) as err:
        lm.generation_plans(_opt("dynamic-int8"))
    assert err.value.where == "spec.optimization.quantization.mode"
    with pytest.raises(InputError) as err:
        lm.generation_plans(_opt("none", True, candidates=[{"name": "x"}]))
    assert err.value.where == "spec.optimization.search.candidates"


def test_perplexity_of_a_uniform_model_is_the_vocabulary_size() -> None:
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 50, size=(3, 20))
    nll, n = lm.nll_from_logits(np.zeros((3, 20, 50), dtype=np.float32), ids)
    assert n == 3 * 19
    assert lm.perplexity([(nll, n)]) == pytest.approx(50.0)


def test_perplexity_of_a_model_sure_of_the_next_token_is_one_and_of_a_wrong_one_is_large() -> None:
    ids = np.array([[1, 2, 3, 4, 5]])
    right = np.full((1, 5, 8), -30.0, dtype=np.float32)
    wrong = right.copy()
    for t in range(4):
        right[0, t, ids[0, t + 1]] = 30.0
        wrong[0, t, 0] = 30.0
    assert lm.perplexity([lm.nll_from_logits(right, ids)]) == pytest.approx(1.0)
    assert lm.perplexity([lm.nll_from_logits(wrong, ids)]) > 1e20
    # parts pool tokens, not perplexities: two windows of 4 tokens, nll 0 and 4*log(8)
    assert lm.perplexity([(0.0, 4), (4 * math.log(8), 4)]) == pytest.approx(math.sqrt(8))


@pytest.mark.parametrize(
    "ref,cand,expected",
    [
        ([[1, 2, 3, 4]], [[1, 2, 3, 4]], 1.0),
        ([[1, 2, 3, 4]], [[1, 2, 9, 4]], 0.5),  # tokens after the first difference don't count
        ([[1, 2, 3, 4]], [[5, 2, 3, 4]], 0.0),
        ([[1, 2, 3, 4]], [[1, 2]], 0.5),  # stopped early (end of sequence)
        ([[1, 2], [7, 8, 9, 10]], [[1, 2], [7, 0, 9, 10]], 0.625),
        ([[]], [[]], 1.0),
    ],
)
def test_greedy_agreement(ref: list[list[int]], cand: list[list[int]], expected: float) -> None:
    assert lm.agreement(ref, cand) == pytest.approx(expected)


def test_step_agreement_counts_every_step_given_the_same_prefix() -> None:
    assert lm.step_agreement([[1, 2, 3, 4]], [[1, 2, 9, 4]]) == 0.75  # a flipped near-tie costs one step, not the rest
    assert lm.step_agreement([[1, 2], [3, 4, 5, 6]], [[1, 0], [3, 4, 5, 6]]) == pytest.approx(5 / 6)
    assert lm.step_agreement([[]], [[]]) == 1.0


class _Recorder:
    """A stand-in model whose top-1 at every position is the next token of a fixed sequence shifted by `flip`."""

    def __init__(self, flip: int) -> None:
        self.flip = flip
        self.seen: list[list[int]] = []

    def logits(self, ids: np.ndarray) -> np.ndarray:
        self.seen.append(ids[0].tolist())
        out = np.zeros((1, ids.shape[1], 16), dtype=np.float32)
        for t in range(ids.shape[1]):
            out[0, t, (ids[0, t] + 1 + (self.flip if t % 2 else 0)) % 16] = 1.0
        return out


def test_predicted_steps_feeds_the_reference_continuation_and_reads_the_steps_after_the_prompt() -> None:
    m = _Recorder(flip=0)
    assert lm.predicted_steps(m, [3, 4], [5, 6, 7]) == [5, 6, 7]
    assert m.seen == [[3, 4, 5, 6, 7]]
    assert lm.predicted_steps(_Recorder(flip=2), [3, 4], [5, 6, 7]) == [7, 6, 9]
    assert lm.predicted_steps(m, [3], []) == []


def test_verdict_names_the_setting_that_rejects() -> None:
    g = QualityGate()
    assert g.max_perplexity_ratio == 1.05 and g.min_greedy_agreement == 0.9
    before = {"perplexity": 10.0}
    assert lm.verdict(before, {"perplexity": 10.4, "greedyAgreement": 0.9}, g) == (True, "")
    ok, reason = lm.verdict(before, {"perplexity": 10.6, "greedyAgreement": 1.0}, g)
    assert not ok and "maxPerplexityRatio 1.05" in reason and "1.06" in reason
    ok, reason = lm.verdict(before, {"perplexity": 10.0, "greedyAgreement": 0.5}, g)
    assert not ok and "minGreedyAgreement 0.9" in reason
    ok, _ = lm.verdict(before, {"perplexity": float("nan"), "greedyAgreement": 1.0}, g)
    assert not ok


def test_windows_and_prompts_from_held_out_text() -> None:
    w = lm.windows(list(range(1000)), 128, 5)
    assert w.shape == (5, 128) and w.dtype == np.int64 and w[1, 0] == 128
    assert lm.windows(list(range(300)), 128, 64).shape == (2, 128)
    with pytest.raises(InputError) as err:
        lm.windows(list(range(100)), 128, 4)
    assert err.value.where == "spec.data.validation.uri" and "at least 128" in str(err.value)
    text = "short\n\n" + "a" * 300 + "\n\n" + "b" * 150 + "\n\n" + "c" * 90
    assert lm.prompt_texts(text, 8) == ["a" * 200, "b" * 150]
    assert lm.prompt_texts(text, 1) == ["a" * 200]

"""Decoder language models (model.task: generation): export with a KV cache, quantize weight-only,
gate on perplexity and greedy agreement, measure tokens/s and time to first token.

The export and the generation loop are ONNX Runtime GenAI's: its model builder reads the Hugging
Face checkpoint (config.json, safetensors, tokenizer files) and writes an ONNX decoder whose past
key/values are inputs and present key/values outputs (GroupQueryAttention), with MatMul weights in
float32, or block-quantized to int8 or int4 (MatMulNBits); its Generator runs the loop (prefill,
then one token per step on the cache). Nothing here re-implements either.

The gate compares each candidate with the original checkpoint in PyTorch (transformers):
- perplexity on held-out text (data.validation, a UTF-8 text file) in windows of the context
  length, teacher-forced; the candidate's ratio to the original's must be <= maxPerplexityRatio;
- greedy agreement: on prompts from the held-out text, both decode `greedyTokens` tokens greedily;
  a prompt scores the share of tokens before the first difference; the mean must be >= minGreedyAgreement.

Pure helpers (plans, perplexity from logits, agreement, the verdict, windows and prompts) are
unit-tested without a model; the rest loads one.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np

from ..api.types import Clipping, Optimization, Pruning, QualityGate, Quantization, QuantizationMode
from .errors import InputError, OptimizationError
from .search import Plan

CHECKPOINT_FILES: Final = ("config.json", "model.safetensors")
OPTIONAL_FILES: Final = ("generation_config.json",)
TOKENIZER_FILES: Final = ("tokenizer.json", "tokenizer_config.json")
PRECISION: Final = {
    QuantizationMode.none: "fp32",
    QuantizationMode.int8_weight_only: "int8",
    QuantizationMode.int4_weight_only: "int4",
}
DEFAULT_BLOCK: Final = 32
MAX_WINDOW: Final = 128  # tokens per perplexity window (or the context, if shorter)
MAX_WINDOWS: Final = 32
PROMPTS: Final = 8
PROMPT_TOKENS: Final = 24


@dataclass(frozen=True)
class LmPlan:
    """One candidate: the builder's precision and, for int8/int4, the MatMulNBits block size and
    whether the token embedding (a Gather) is block-quantized too (else it stays float32)."""

    plan: Plan
    precision: str
    block_size: int | None
    embeddings: bool = False


def _plan(mode: QuantizationMode, block: int | None, embeddings: bool = False) -> LmPlan:
    name = {"fp32": "fp32", "int8": "int8-weight-only", "int4": "int4-weight-only"}[PRECISION[mode]]
    if block is not None and block != DEFAULT_BLOCK:
        name += f"-block{block}"
    if embeddings:
        name += "-embeddings"
    q = Quantization(mode=mode, op_types=["MatMul", "Gather"] if embeddings else None)
    return LmPlan(Plan(name, q, Clipping(), Pruning()), PRECISION[mode], block, embeddings)


def generation_plans(opt: Optimization) -> list[LmPlan]:
    """The spec's mode alone, or with search the modes at least as small as it asks for (a search
    never trades away size the spec wants): none -> fp32, int8, int4; int8 -> int8, int4;
    int4 -> int4 at block sizes 32 and 128; every search ends with int4 with the embedding
    quantized too (smallest; large vocabularies gain most). Capped at search.maxCandidates."""
    mode = QuantizationMode(opt.quantization.mode)
    if mode not in PRECISION:
        raise InputError("spec.optimization.quantization.mode",
                         f"{mode.value} does not apply to a generation model: use none, int8-weight-only or int4-weight-only")
    block = None if mode == QuantizationMode.none else DEFAULT_BLOCK
    if not opt.search.enabled:
        return [_plan(mode, block)]
    if opt.search.candidates:
        raise InputError("spec.optimization.search.candidates", "a generation model's search uses the built-in candidates: remove search.candidates")
    fp32, int8 = _plan(QuantizationMode.none, None), _plan(QuantizationMode.int8_weight_only, DEFAULT_BLOCK)
    int4 = _plan(QuantizationMode.int4_weight_only, DEFAULT_BLOCK)
    int4_emb = _plan(QuantizationMode.int4_weight_only, DEFAULT_BLOCK, embeddings=True)
    if mode == QuantizationMode.none:
        plans = [fp32, int8, int4, int4_emb]
    elif mode == QuantizationMode.int8_weight_only:
        plans = [int8, int4, int4_emb]
    else:
        plans = [int4, _plan(QuantizationMode.int4_weight_only, 128), int4_emb]
    return plans[: opt.search.max_candidates]


# --- pure measures ------------------------------------------------------------------------------


def nll_from_logits(logits: np.ndarray, ids: np.ndarray) -> tuple[float, int]:
    """Summed negative log-likelihood of ids[:, 1:] under logits[:, :-1] ([batch, seq, vocab]) and the token count."""
    lg = logits[:, :-1].astype(np.float64)
    target = ids[:, 1:]
    m = lg.max(axis=-1, keepdims=True)
    logz = np.log(np.exp(lg - m).sum(axis=-1)) + m[..., 0]
    picked = np.take_along_axis(lg, target[..., None], axis=-1)[..., 0]
    return float((logz - picked).sum()), int(target.size)


def perplexity(parts: Sequence[tuple[float, int]]) -> float:
    total, count = sum(p[0] for p in parts), sum(p[1] for p in parts)
    return math.exp(total / count) if count else float("nan")


def step_agreement(reference: Sequence[Sequence[int]], predicted: Sequence[Sequence[int]]) -> float:
    """Share of the reference's greedy tokens the candidate predicts top-1 at the same step, given
    the same prefix (the prompt and the reference's tokens before it), over all prompts."""
    pairs = [(a, b) for ref, pred in zip(reference, predicted) for a, b in zip(ref, pred)]
    return sum(a == b for a, b in pairs) / len(pairs) if pairs else 1.0


def agreement(reference: Sequence[Sequence[int]], candidate: Sequence[Sequence[int]]) -> float:
    """Mean over prompts of the share of the reference's greedy tokens the candidate repeats before
    the first difference when it decodes on its own (one flipped near-tie ends the match)."""
    scores = []
    for a, b in zip(reference, candidate):
        n = max(len(a), len(b))
        if n == 0:
            scores.append(1.0)
            continue
        same = 0
        for x, y in zip(a, b):
            if x != y:
                break
            same += 1
        scores.append(same / n)
    return float(np.mean(scores)) if scores else 1.0


def verdict(before: dict[str, float], after: dict[str, float], g: QualityGate) -> tuple[bool, str]:
    ratio = after["perplexity"] / before["perplexity"]
    if not math.isfinite(ratio) or ratio > g.max_perplexity_ratio:
        return False, f"perplexity ratio {ratio:.4f} > maxPerplexityRatio {g.max_perplexity_ratio}"
    if after["greedyAgreement"] < g.min_greedy_agreement:
        return False, f"greedy agreement {after['greedyAgreement']:.3f} < minGreedyAgreement {g.min_greedy_agreement}"
    return True, ""


def windows(ids: Sequence[int], length: int, limit: int) -> np.ndarray:
    """Non-overlapping windows of `length` tokens, at most `limit`: [n, length] int64."""
    n = min(limit, len(ids) // length)
    if n < 1:
        raise InputError("spec.data.validation.uri", f"the held-out text has {len(ids)} tokens: the perplexity needs at least {length}")
    return np.asarray(ids[: n * length], dtype=np.int64).reshape(n, length)


def prompt_texts(text: str, count: int, chars: int = 200) -> list[str]:
    """Beginnings of the held-out text's paragraphs (those long enough), `count` at most."""
    paras = [p.strip() for p in text.split("\n\n")]
    out = [p[:chars] for p in paras if len(p) >= chars // 2]
    return out[:count]


# --- checkpoint, builder, runners ---------------------------------------------------------------


def fetch_checkpoint(fetch_one: Any, model_uri: str, tokenizer_uri: str | None, dest: Path) -> Path:
    """The checkpoint's files under `dest` (the model's and the tokenizer's, which may live
    elsewhere). `fetch_one(uri, field)` returns a local path or raises InputError naming the field."""
    dest.mkdir(parents=True, exist_ok=True)
    wanted = [(model_uri, f, "spec.model.uri", True) for f in CHECKPOINT_FILES]
    wanted += [(model_uri, f, "spec.model.uri", False) for f in OPTIONAL_FILES]
    tok = tokenizer_uri or model_uri
    wanted += [(tok, f, "spec.generation.tokenizerUri" if tokenizer_uri else "spec.model.uri", True) for f in TOKENIZER_FILES]
    for base, name, field_name, required in wanted:
        uri = base.rstrip("/") + "/" + name
        try:
            path = fetch_one(uri, field_name)
        except InputError:
            if required:
                raise
            continue
        target = dest / name
        if target.exists() or target.is_symlink():
            target.unlink()
        try:
            os.symlink(path.resolve(), target)
        except OSError:
            shutil.copyfile(path, target)
    return dest


def build(checkpoint: Path, out: Path, p: LmPlan, cache: Path) -> Path:
    """Export (and quantize) with ONNX Runtime GenAI's model builder, in a child process (it
    prints progress and imports its own modules by path). Returns `out`."""
    if out.exists():
        shutil.rmtree(out)
    cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(checkpoint), "-o", str(out), "-p", p.precision, "-e", "cpu", "-c", str(cache)]
    extra = [f"block_size={p.block_size}"] if p.block_size is not None else []
    if p.embeddings:
        extra.append("op_types_to_quantize=MatMul/Gather")
    if extra:
        cmd += ["--extra_options", *extra]
    env = {**os.environ, "TQDM_DISABLE": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0 or not (out / "model.onnx").exists():
        lines = [ln for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip()]
        raise OptimizationError("spec.model.uri", f"the ONNX Runtime GenAI model builder failed ({p.plan.name}): {lines[-1] if lines else proc.returncode}")
    return out


def artifact_bytes(d: Path) -> int:
    """Bytes of the model itself (graph and weights), not of the tokenizer or configuration."""
    return sum(f.stat().st_size for f in d.iterdir() if f.name.startswith("model.onnx"))


def checkpoint_bytes(d: Path) -> int:
    return sum((d / f).stat().st_size for f in CHECKPOINT_FILES[1:])


class TorchLm:
    """The original checkpoint in PyTorch (transformers), float32."""

    def __init__(self, checkpoint: Path) -> None:
        import torch
        from transformers import AutoModelForCausalLM

        self.torch = torch
        self.model = AutoModelForCausalLM.from_pretrained(str(checkpoint), dtype=torch.float32).eval()

    def logits(self, ids: np.ndarray) -> np.ndarray:
        with self.torch.inference_mode():
            return np.asarray(self.model(input_ids=self.torch.from_numpy(ids)).logits.numpy())

    def greedy(self, prompt: Sequence[int], n: int, *, exact: bool = False) -> list[int]:
        with self.torch.inference_mode():
            ids = self.torch.tensor([list(prompt)], dtype=self.torch.long)
            kw: dict[str, Any] = {"min_new_tokens": n} if exact else {}
            out = self.model.generate(ids, attention_mask=self.torch.ones_like(ids), max_new_tokens=n, do_sample=False, **kw)
        return [int(t) for t in out[0, len(prompt):]]

    def timed(self, prompt: Sequence[int], n: int) -> tuple[float, float]:
        """(time to first token in s, seconds for n tokens): two generate() calls."""
        t0 = time.perf_counter()
        self.greedy(prompt, 1, exact=True)
        t1 = time.perf_counter()
        self.greedy(prompt, n, exact=True)
        return t1 - t0, time.perf_counter() - t1


class OnnxLm:
    """A built candidate: the ONNX decoder in ONNX Runtime for teacher-forced logits, and ONNX
    Runtime GenAI's Generator for decoding on the KV cache."""

    def __init__(self, model_dir: Path, threads: int) -> None:
        import onnxruntime as ort
        import onnxruntime_genai as og  # type: ignore[import-untyped]

        self.og = og
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(model_dir / "model.onnx"), so, providers=["CPUExecutionProvider"])
        cfg = json.loads((model_dir / "genai_config.json").read_text())["model"]["decoder"]
        self.layers, self.kv_heads, self.head = cfg["num_hidden_layers"], cfg["num_key_value_heads"], cfg["head_size"]
        config = og.Config(str(model_dir))
        config.overlay(json.dumps({"model": {"decoder": {"session_options": {"intra_op_num_threads": threads, "inter_op_num_threads": 1}}}}))
        self.model = og.Model(config)

    def logits(self, ids: np.ndarray) -> np.ndarray:
        b, s = ids.shape
        feeds: dict[str, np.ndarray] = {"input_ids": ids, "attention_mask": np.ones((b, s), dtype=np.int64)}
        empty = np.zeros((b, self.kv_heads, 0, self.head), dtype=np.float32)
        for i in self.session.get_inputs():
            if i.name.startswith("past_key_values."):
                feeds[i.name] = empty
        return np.asarray(self.session.run(["logits"], feeds)[0])

    def _generator(self, prompt: Sequence[int], n: int, exact: bool) -> Any:
        params = self.og.GeneratorParams(self.model)
        opts: dict[str, Any] = {"max_length": len(prompt) + n, "do_sample": False}
        if exact:
            opts["min_length"] = len(prompt) + n
        params.set_search_options(**opts)
        g = self.og.Generator(self.model, params)
        g.append_tokens(np.asarray([list(prompt)], dtype=np.int32))
        return g

    def greedy(self, prompt: Sequence[int], n: int, *, exact: bool = False) -> list[int]:
        g = self._generator(prompt, n, exact)
        out: list[int] = []
        while not g.is_done() and len(out) < n:
            g.generate_next_token()
            out.append(int(g.get_next_tokens()[0]))
        return out

    def timed(self, prompt: Sequence[int], n: int) -> tuple[float, float]:
        """(time to first token in s, seconds for the other n-1 tokens) of one generation."""
        t0 = time.perf_counter()
        g = self._generator(prompt, n, True)
        g.generate_next_token()
        g.get_next_tokens()
        t1 = time.perf_counter()
        for _ in range(n - 1):
            g.generate_next_token()
            g.get_next_tokens()
        return t1 - t0, time.perf_counter() - t1


def predicted_steps(lm: Any, prompt: Sequence[int], continuation: Sequence[int]) -> list[int]:
    """The model's top-1 token at each step of `continuation`, given the prompt and the continuation before it (teacher-forced)."""
    if not continuation:
        return []
    ids = np.asarray([list(prompt) + list(continuation)], dtype=np.int64)
    lg = lm.logits(ids)[0, len(prompt) - 1 : len(prompt) + len(continuation) - 1]
    return [int(t) for t in lg.argmax(-1)]


def quality(
    lm: Any, wins: np.ndarray, prompts: Sequence[Sequence[int]], greedy_tokens: int, reference: Sequence[Sequence[int]] | None = None, batch: int = 8
) -> tuple[dict[str, float], list[list[int]]]:
    """Perplexity on the windows and the greedy continuations of the prompts; given the original's
    continuations (`reference`), also greedyAgreement (step_agreement) and greedyPrefixAgreement (agreement)."""
    parts = [nll_from_logits(lm.logits(wins[i : i + batch]), wins[i : i + batch]) for i in range(0, len(wins), batch)]
    conts = [lm.greedy(p, greedy_tokens) for p in prompts]
    q = {"perplexity": perplexity(parts)}
    if reference is not None:
        q["greedyAgreement"] = step_agreement(reference, [predicted_steps(lm, p, c) for p, c in zip(prompts, reference)])
        q["greedyPrefixAgreement"] = agreement(reference, conts)
    return q, conts


def speed(runners: Sequence[Any], prompts: Sequence[Sequence[int]], new_tokens: int, rounds: int) -> list[dict[str, float]]:
    """Side by side, interleaved (round after round, every runner on every prompt), after one
    warm-up: median TTFT in ms and output tokens/s (new tokens over the whole request, prefill included)."""
    for r in runners:
        r.timed(prompts[0], 2)
    ttft: list[list[float]] = [[] for _ in runners]
    tps: list[list[float]] = [[] for _ in runners]
    for _ in range(rounds):
        for i, r in enumerate(runners):
            for p in prompts:
                first, rest = r.timed(p, new_tokens)
                ttft[i].append(first * 1000)
                # torch's timing is two calls (first token, then all n); GenAI's is one (first, then n-1 more)
                total = rest if isinstance(r, TorchLm) else first + rest
                tps[i].append(new_tokens / total)
    out = []
    for t, s in zip(ttft, tps):
        med = float(np.median(s))
        out.append({"ttftMs": float(np.median(t)), "tokensPerSecond": med, "msPerToken": 1000.0 / med,
                    "spread": float((np.max(s) - np.min(s)) / med) if med else 0.0})
    return out

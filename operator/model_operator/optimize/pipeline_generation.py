"""The worker's pipeline for decoder language models (model.task: generation): fetch the
checkpoint and held-out text -> the original's perplexity and greedy continuations (PyTorch) ->
candidates (ONNX Runtime GenAI's builder: fp32, int8 or int4 weight-only, with a KV cache) gated
on perplexity ratio and greedy agreement -> tokens/s and TTFT side by side with the original's
generate() -> package -> publish. See generation.py for the measures.

The artifact is a Triton model repository: the chosen candidate's GenAI model directory (model.onnx
and its weights, genai_config.json with the spec's sampling defaults and lengths, the tokenizer
files, generation.json) under repository/<name>/1/ with triton/generation_model.py as model.py (a
decoupled model streaming tokens) and its config.pbtxt, plus report.json; nothing is written at
the destination until it is complete.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

from .. import storage
from ..api.hashing import spec_hash as compute_spec_hash
from ..api.types import Generation, Target
from . import generation as lm
from . import report as rep
from .errors import GateError, InputError, OptimizationError, WorkerError, first_line
from .pipeline import Run, _bytes, _environment, _fetch, _q, check_destination
from .progress import PROGRESS
from .runtime import configure_torch, threads
from .search import Outcome, choose, default_objective, pareto

log = logging.getLogger("model_operator.optimize")

SERVING_FILE = "generation.json"
SPEED_PROMPTS = 2
SPEED_TOKENS = 32
SPEED_ROUNDS = 3


def _tokenizer(checkpoint: Path) -> Any:
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        tok = AutoTokenizer.from_pretrained(str(checkpoint))
        tok.model_max_length = 1 << 40  # the held-out text is tokenized whole, then cut into windows
        return tok
    except Exception as exc:  # noqa: BLE001 - any failure here is the tokenizer files' to fix
        raise InputError("spec.generation.tokenizerUri", f"the tokenizer files do not load: {first_line(exc)}") from None


def _context(checkpoint: Path, gen: Generation) -> tuple[int, int, int]:
    """(max context tokens, max new tokens, eos token id) from the spec, else the model's config;
    maxNewTokens left at its default is capped at half the context."""
    cfg = json.loads((checkpoint / "config.json").read_text())
    ctx = gen.max_context_tokens or int(cfg.get("max_position_embeddings") or 0)
    if ctx <= 0:
        raise InputError("spec.generation.maxContextTokens", "config.json has no max_position_embeddings: set generation.maxContextTokens")
    new = gen.max_new_tokens if "max_new_tokens" in gen.model_fields_set else min(gen.max_new_tokens, ctx // 2)
    if new >= ctx:
        raise InputError("spec.generation.maxNewTokens", f"maxNewTokens {new} leaves no room for a prompt in a context of {ctx} tokens")
    eos = cfg.get("eos_token_id")
    return ctx, new, int(eos[0] if isinstance(eos, list) else eos) if eos is not None else -1


def _configure(model_dir: Path, gen: Generation, ctx: int, max_new: int, eos_id: int) -> None:
    """The spec's lengths, end-of-sequence token and sampling defaults into genai_config.json."""
    path = model_dir / "genai_config.json"
    cfg = json.loads(path.read_text())
    s = gen.sampling
    cfg["model"]["context_length"] = ctx
    if eos_id >= 0:
        cfg["model"]["eos_token_id"] = eos_id
    cfg["search"].update({"max_length": ctx, "do_sample": s.temperature > 0, "temperature": s.temperature or 1.0, "top_k": s.top_k or 0,
                          "top_p": s.top_p, "repetition_penalty": s.repetition_penalty})
    path.write_text(json.dumps(cfg, indent=2) + "\n")
    # GenAI refuses keys it doesn't know, so the serving limits go in a file of their own.
    (model_dir / SERVING_FILE).write_text(json.dumps({"maxNewTokens": max_new, "maxContextTokens": ctx, "eosTokenId": eos_id,
                                                      "sampling": s.model_dump(mode="json", by_alias=True)}, indent=2) + "\n")


def _versions(*modules: str) -> dict[str, str]:
    import importlib

    return {m: str(getattr(importlib.import_module(m), "__version__", "?")) for m in modules}


def run_generation(r: Run) -> dict[str, Any]:
    spec = r.spec
    opt = spec.optimization
    gen = spec.generation or Generation()
    n_threads = threads()
    configure_torch(n_threads)
    shash = compute_spec_hash(spec)
    plans = lm.generation_plans(opt)

    with r.step("fetch"):
        check_destination(r.output, r.base_dir)
        if spec.data.validation is None:
            raise InputError("spec.data.validation", "the generation gate needs held-out text: set data.validation to a UTF-8 text file")
        ckpt = lm.fetch_checkpoint(lambda uri, f: _fetch(r, uri, f), spec.model.uri, gen.tokenizer_uri, r.work / "checkpoint")
        text_path = _fetch(r, spec.data.validation.uri, "spec.data.validation.uri")
        log.info("fetched %s (%s of weights), held-out text %s", spec.model.uri, _bytes(lm.checkpoint_bytes(ckpt)), spec.data.validation.uri)

    with r.step("load"):
        ctx, max_new, eos_id = _context(ckpt, gen)
        if gen.eos_token_id is not None:
            eos_id = gen.eos_token_id
        tokenizer = _tokenizer(ckpt)
        if gen.eos_token and gen.eos_token_id is None:
            tid = tokenizer.convert_tokens_to_ids(gen.eos_token)
            if tid is None or tid == tokenizer.unk_token_id:
                raise InputError("spec.generation.eosToken", f"{gen.eos_token!r} is not a token of the tokenizer")
            eos_id = int(tid)
        try:
            original = lm.TorchLm(ckpt)
        except Exception as exc:  # noqa: BLE001 - a checkpoint transformers can't load is the model's field to fix
            raise InputError("spec.model.uri", f"the checkpoint does not load in transformers: {first_line(exc)}") from None
        log.info("original: %s, context %d, at most %d new tokens, eos id %d, %s threads", type(original.model).__name__, ctx, max_new, eos_id, n_threads)

    with r.step("data"):
        try:
            text = text_path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise InputError("spec.data.validation.uri", "a generation model's validation data is UTF-8 text") from None
        ids = tokenizer(text)["input_ids"]
        limit = spec.data.validation.samples or lm.MAX_WINDOWS
        wins = lm.windows(ids, min(lm.MAX_WINDOW, ctx), limit)
        prompts = [tokenizer(p)["input_ids"][: lm.PROMPT_TOKENS] for p in lm.prompt_texts(text, lm.PROMPTS)]
        if not prompts:
            raise InputError("spec.data.validation.uri", "the held-out text has no paragraph long enough for a greedy prompt")
        log.info("held-out: %d tokens -> %d windows of %d for perplexity, %d prompts of <= %d tokens for greedy agreement",
                 len(ids), len(wins), wins.shape[1], len(prompts), lm.PROMPT_TOKENS)

    g = opt.quality_gate
    with r.step("reference"):
        before, ref_conts = lm.quality(original, wins, prompts, g.greedy_tokens)
        log.info("original perplexity %.4g on %d held-out tokens", before["perplexity"], wins.size)

    outcomes: list[Outcome] = []
    with r.step(f"candidates ({len(plans)})"):
        for i, p in enumerate(plans):
            PROGRESS.update(candidate=i + 1, candidates=len(plans))
            o = Outcome(p.plan)
            t0 = time.monotonic()
            try:
                out = lm.build(ckpt, r.work / "candidates" / p.plan.name, p, r.work / "builder-cache")
                shutil.rmtree(r.work / "builder-cache", ignore_errors=True)
                _configure(out, gen, ctx, max_new, eos_id)
                cand = lm.OnnxLm(out, n_threads)
                after, _ = lm.quality(cand, wins, prompts, g.greedy_tokens, ref_conts)
                after["perplexityRatio"] = after["perplexity"] / before["perplexity"]
                o.quality, o.size_bytes, o.artifact = after, lm.artifact_bytes(out), (out, cand)
                o.passed, o.reason = lm.verdict(before, after, g)
                o.details = {"precision": p.precision, "blockSize": p.block_size}
            except WorkerError as exc:
                if len(plans) == 1:
                    raise
                o.reason = exc.line
            except Exception as exc:  # noqa: BLE001 - one broken candidate must not end a search
                if len(plans) == 1:
                    raise OptimizationError("spec.optimization", f"{p.plan.name}: {type(exc).__name__}: {first_line(exc)}") from None
                o.reason = f"{type(exc).__name__}: {first_line(exc)}"
            o.seconds = round(time.monotonic() - t0, 3)
            outcomes.append(o)
            PROGRESS.candidate_done(rep.candidate_entry(o))
            log.info("candidate %d/%d %s: %s, %s, %s%s", i + 1, len(plans), p.plan.name, "passed" if o.passed else "REJECTED",
                     _bytes(o.size_bytes or 0), _q(o.quality), "" if o.passed else f": {o.reason}")

    if not any(o.artifact is not None for o in outcomes):
        raise OptimizationError("spec.optimization", f"every candidate failed; {outcomes[0].plan.name}: {outcomes[0].reason}")
    if not any(o.passed for o in outcomes):
        table = [rep.candidate_entry(o) for o in outcomes]
        worst = outcomes[0]
        raise GateError("spec.optimization.qualityGate", f"no candidate passed the gate ({len(outcomes)} tried); {worst.plan.name}: {worst.reason}", table)

    with r.step("latency"):
        timed = [o for o in outcomes if o.passed]
        speed_prompts = prompts[:SPEED_PROMPTS]
        new = min(SPEED_TOKENS, max_new)
        figs = lm.speed([original] + [o.artifact[1] for o in timed], speed_prompts, new, SPEED_ROUNDS)
        orig = figs[0]
        for o, f in zip(timed, figs[1:]):
            o.latency_ms, o.latency_spread = f["msPerToken"], f["spread"]
            o.details.update({"tokensPerSecond": f["tokensPerSecond"], "ttftMs": f["ttftMs"]})
            log.info("speed %s: %.1f tokens/s (%.2fx the original's %.1f), TTFT %.2f ms (original %.2f ms)", o.plan.name, f["tokensPerSecond"],
                     f["tokensPerSecond"] / orig["tokensPerSecond"], orig["tokensPerSecond"], f["ttftMs"], orig["ttftMs"])
    for o, flag in zip(outcomes, pareto(outcomes)):
        o.pareto = flag
    objective = default_objective(opt, Target(spec.target))
    best = choose(outcomes, objective)
    assert best is not None
    won = outcomes[best]
    won_dir: Path = won.artifact[0]
    size = won.size_bytes or 0
    orig_size = lm.checkpoint_bytes(ckpt)
    figures = rep.rounded({
        "latencyMsBefore": orig["msPerToken"], "latencyMsAfter": won.latency_ms, "speedup": orig["msPerToken"] / (won.latency_ms or 1),
        "tokensPerSecondBefore": orig["tokensPerSecond"], "tokensPerSecondAfter": won.details["tokensPerSecond"],
        "ttftMsBefore": orig["ttftMs"], "ttftMsAfter": won.details["ttftMs"], "latencyBatchSize": 1, "threads": n_threads,
        "latencySpread": won.latency_spread, "objective": objective.value,
        "latencyUnit": f"ms per generated token ({new} new tokens after a {len(speed_prompts[0])}-token prompt, median of {SPEED_ROUNDS} interleaved rounds)",
    })
    log.info("chosen %s (objective %s): %s vs %s original, perplexity %.4g (original %.4g)", won.plan.name, objective.value, _bytes(size),
             _bytes(orig_size), won.quality["perplexity"], before["perplexity"])

    with r.step("package"):
        stage = r.work / "stage"
        if stage.exists():
            shutil.rmtree(stage)
        version = stage / "repository" / r.name / "1"
        shutil.copytree(won_dir, version)
        # A decoupled Triton python-backend model streaming the tokens (triton/generation_model.py)
        from ..triton import generation_model

        shutil.copyfile(generation_model.__file__, version / "model.py")
        (version.parent / "config.pbtxt").write_text(generation_model.config_pbtxt(r.name))
        files = storage.file_digests(stage)
        digest = storage.digest.digest_of(files)
        report = {
            "name": r.name,
            "specHash": shash,
            "createdAt": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "worker": {**_environment(n_threads), **_versions("onnxruntime_genai", "transformers")},
            "source": {"uri": spec.model.uri, "format": "hf", "sizeBytes": orig_size, "sha256": storage.file_sha256(ckpt / "model.safetensors")},
            "data": {"validation": {"uri": spec.data.validation.uri, "tokens": int(wins.size), "windows": len(wins), "prompts": len(prompts)}},
            "artifact": {"uri": r.output, "sha256": digest, "format": "onnx-genai", "modelFile": f"repository/{r.name}/1/model.onnx",
                         "sizeBytes": size, "originalSizeBytes": orig_size, "sizeRatio": rep.rounded(orig_size / size if size else 0.0, 4), "files": files,
                         "contextTokens": ctx, "eosTokenId": eos_id},
            "optimization": rep.rounded({
                "recipe": won.plan.name, "plan": won.plan.describe(), "qualityBefore": before, "qualityAfter": won.quality,
                "qualityOn": f"held-out text: {wins.size} tokens in {len(wins)} windows; {len(prompts)} greedy prompts", **figures,
                "originalRuntime": "PyTorch (transformers generate(), float32)", "gate": g.model_dump(mode="json", by_alias=True),
                "task": "generation", "search": bool(opt.search.enabled), "candidates": [rep.candidate_entry(o, full=True) for o in outcomes],
            }),
            "steps": r.steps,
        }
        (stage / storage.REPORT).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        (stage / storage.MARKER).write_text(json.dumps({"sha256": digest, "specHash": shash}) + "\n", encoding="utf-8")

    with r.step("publish"):
        try:
            storage.publish_dir(stage, r.output, base_dir=r.base_dir)
        except storage.StorageError as exc:
            raise InputError("--output", str(exc)) from None
        log.info("published %s (sha256 %s)", r.output, digest)

    return rep.summary(
        spec_hash=shash, uri=r.output, sha256=digest, fmt="onnx-genai", size_bytes=size, original_size_bytes=orig_size, recipe=won.plan.name,
        quality_before=before, quality_after=won.quality, figures=figures, outcomes=outcomes, chosen=best,
    )

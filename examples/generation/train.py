"""Train a small decoder language model in about a minute on a CPU, from a corpus Python ships
(the language reference topics in the standard library's `pydoc_data.topics`: ~465k characters
of English prose and grammar; no download), and save it as a Hugging Face LLaMA checkpoint:

    model/config.json, generation_config.json, model.safetensors   the decoder (LLaMA architecture)
    model/tokenizer.json, tokenizer_config.json                     a byte-level BPE tokenizer trained here
    validation.txt                                                  held-out text (the last 10 % of the corpus)
    prompts.txt                                                     held-out prompts, one per line

No pretrained decoder ships in a package reachable here, so this one is trained from scratch: it
gives the quality gate a real perplexity to defend (a random model's would be flat). The model is
tiny (about 1 M parameters); benchmarks/generation.py also measures a larger randomly
initialized configuration for speed and size only.

Deterministic up to thread scheduling: fixed seeds, fixed corpus order.

    python examples/generation/train.py [--out DIR] [--steps N]
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any

SEED = 0
EOS = "<|endoftext|>"
log = logging.getLogger("train-generation")

# The trained example: small enough to train in about a minute on two cores.
TINY: dict[str, Any] = dict(
    hidden_size=128, intermediate_size=384, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256
)


def corpus() -> tuple[str, str]:
    """The reference topics in sorted key order, split 90/10 into training and held-out text."""
    from pydoc_data.topics import topics

    text = "\n\n".join(topics[k].strip() for k in sorted(topics))
    cut = int(len(text) * 0.9)
    cut = text.index("\n\n", cut) + 2  # split at a paragraph boundary
    return text[:cut], text[cut:]


def train_tokenizer(text: str, vocab_size: int) -> Any:
    """A byte-level BPE (the GPT-2 scheme: any UTF-8 text encodes, no unknown token) on the training text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[EOS], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator([text], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, bos_token=EOS, unk_token=None, model_max_length=TINY["max_position_embeddings"])


def build_model(vocab_size: int, eos_id: int, **overrides: Any) -> Any:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(SEED)
    cfg = LlamaConfig(
        vocab_size=vocab_size, bos_token_id=eos_id, eos_token_id=eos_id, pad_token_id=eos_id, tie_word_embeddings=False, **{**TINY, **overrides}
    )
    return LlamaForCausalLM(cfg)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("examples/generation/out"))
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--vocab", type=int, default=512)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: OpenMP's barriers make more threads far slower on a busy machine)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(SEED)
    train_text, held_out = corpus()
    tokenizer = train_tokenizer(train_text, args.vocab)
    eos_id = tokenizer.convert_tokens_to_ids(EOS)
    ids = torch.tensor(tokenizer(train_text)["input_ids"], dtype=torch.long)
    model = build_model(len(tokenizer), eos_id)
    n_params = sum(p.numel() for p in model.parameters())
    log.info("corpus: %d training characters -> %d tokens; %d held-out characters; model: %d parameters", len(train_text), len(ids), len(held_out), n_params)

    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=args.steps, pct_start=0.1)
    rng = np.random.default_rng(SEED)
    model.train()
    t0 = time.perf_counter()
    for step in range(args.steps):
        starts = rng.integers(0, len(ids) - args.seq - 1, size=args.batch)
        batch = torch.stack([ids[s : s + args.seq] for s in starts])
        loss = model(input_ids=batch, labels=batch).loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 50 == 0 or step == args.steps - 1:
            log.info("step %d/%d loss %.3f (perplexity %.1f) %.0f s", step + 1, args.steps, loss.item(), math.exp(loss.item()), time.perf_counter() - t0)
    model.eval()

    model_dir = args.out / "model"
    model_dir.mkdir(parents=True, exist_ok=True)
    model.generation_config.eos_token_id = eos_id
    model.generation_config.pad_token_id = eos_id
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    (args.out / "validation.txt").write_text(held_out)
    paragraphs = [p.strip() for p in held_out.split("\n\n") if len(p.strip()) > 80 and "\n" not in p.strip()[:60]]
    prompts = [p[:48].replace("\n", " ") for p in paragraphs[:16]]
    (args.out / "prompts.txt").write_text("\n".join(prompts) + "\n")
    (args.out / "provenance.json").write_text(
        json.dumps(
            {
                "corpus": "pydoc_data.topics (Python %d.%d standard library), keys sorted, 90/10 split" % sys.version_info[:2],
                "training_characters": len(train_text),
                "held_out_characters": len(held_out),
                "tokenizer": f"byte-level BPE, vocabulary {len(tokenizer)}",
                "architecture": "LlamaForCausalLM",
                "config": TINY,
                "parameters": n_params,
                "steps": args.steps,
                "batch": args.batch,
                "sequence": args.seq,
                "final_training_loss": round(loss.item(), 4),
            },
            indent=2,
        )
    )
    log.info("saved %s (%.0f s)", args.out, time.perf_counter() - t0)
    return 0


if __name__ == "__main__":
    sys.exit(main())

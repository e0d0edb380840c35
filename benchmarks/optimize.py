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

    python benchmarks/optimize.py [--out benchmarks/results/optimize-<date>.md] [--threads N]
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
        "model": f"transformer encoder ({LAYERS} layers, hidden {HIDDEN}, {HEADS} heads, FFN {FFN}, vocab {VOCAB}, {params / 1e6:.1f}M params), seq {SEQ}, int64 input_ids + attention_mask",
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
    "The transformer's weights are random (seeded), not trained: nothing may be downloaded here. Quantization error on a trained model can differ; the worker's quality gate (cosine >= 0.99) applies either way.",
    "The digits CNN is trained by examples/digits/train.py (seeded); its top-1 is measured on the 360 held-out images.",
    "Sizes are file sizes: the original TorchScript / torch.export archive (fp32) and the artifact's model.onnx (int8 weights).",
    "Latency is wall time of one call at batch 1, full-length sequences (128 tokens) for the transformer. Absolute numbers move with the machine's load (recorded above); the ratios are taken from interleaved rounds so both sides see the same conditions.",
]


def render(results: list[dict[str, Any]], info: dict[str, str], notes: list[str]) -> str:
    lines = ["# Optimization benchmark", ""]
    lines.append(f"Run with `python benchmarks/optimize.py` on {info['date']}.")
    lines.append("")
    lines.append("## Machine")
    lines.append("")
    for k in ("cpu", "cpus", "affinity", "flags", "threads", "load average at start", "load average at end", "os", "python", "torch", "onnxruntime", "onnx", "numpy"):
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
    for n in [*NOTES, *notes]:
        lines.append(f"- {n}")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=None, help="markdown file (default: benchmarks/results/optimize-<date>.md)")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--note", action="append", default=[], help="a line to add to the Notes section (repeatable)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S", stream=sys.stderr)
    warnings.filterwarnings("ignore")
    os.environ["MODEL_OPERATOR_THREADS"] = str(args.threads)
    info = machine(args.threads)
    with tempfile.TemporaryDirectory(prefix="mo-bench-") as tmp:
        work = Path(tmp)
        results = [bench_digits(work, args.threads, args.batch), bench_transformer(work, args.threads, args.batch)]
    info["load average at end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    text = render(results, info, args.note)
    out = Path(args.out) if args.out else ROOT / "benchmarks/results" / f"optimize-{dt.date.today().isoformat()}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    sys.stdout.write(text)
    log.info("wrote %s", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

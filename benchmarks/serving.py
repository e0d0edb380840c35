"""Benchmark of the served model: the real Triton (nvidia-pytriton's 2.51 build, the Python backend
running ONNX Runtime: the test Triton the e2e suite deploys) on the digits CNN's artifact, driven
at several concurrencies by a closed-loop gRPC load generator (tritonclient's asyncio client,
`model_operator.triton.loadgen`; NVIDIA's perf_analyzer is not to be had here), for

- `batch1`: max batch size 1, no dynamic batching, one instance (the baseline);
- `generated`: the config the operator generates from the example's serving block
  (examples/digits/modeldeployment.yaml: max batch 32, preferred 8/16, queue delay 200 us, one
  instance, ONNX Runtime's own thread count);
- `tuned`: the config the serving autotune's sweep chooses (`triton.tuning.sweep_grid` measured
  at one concurrency, `triton.tuning.choose`), unless `--no-sweep`;

plus the Python backend's overhead: the same artifact in a standalone ONNX Runtime session
(same threads, batch 1, same input) against Triton's round trip at concurrency 1 (batch-1
config) and Triton's own compute time per execution.

One Triton process (explicit model control: each config is loaded, measured, unloaded), the load
generator in this process, both on this machine: the generator's CPU is taken from the server's.

    python benchmarks/serving.py [--out benchmarks/results/serving-<date>.md] [--duration 8]
        [--warmup 2] [--concurrency 1,4,16,64] [--sweep-concurrency 16] [--sweep-duration 5]
        [--no-sweep] [--model-file artifact.onnx]

Goal (issue 16): the generated (or tuned) config >= 3x the batch-1 throughput at 16 clients with
a p95 no worse.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import REPO, add_out, cpu_model, log, use_paths, write_result  # noqa: E402

use_paths("operator")

from model_operator.api.types import DynamicBatching, Serving, TensorSpec  # noqa: E402
from model_operator.triton import sweep, tuning  # noqa: E402
from model_operator.triton.server import TritonServer  # noqa: E402

NAME = "digits"
GOAL_RATIO = 3.0
OVERHEAD_BATCH = 8


def load_spec() -> dict[str, Any]:
    import yaml

    return yaml.safe_load((REPO / "examples/digits/modeldeployment.yaml").read_text())["spec"]


def build_artifact(work: Path, spec: dict[str, Any]) -> tuple[Path, str, np.ndarray]:
    """Train the digits CNN (examples/digits/train.py) and run the real worker on the example's
    spec: (the artifact's model file, its recipe, the held-out images)."""
    import importlib.util

    from optimize import run_pipeline  # the optimize benchmark's in-process worker run

    mod_spec = importlib.util.spec_from_file_location("digits_train", REPO / "examples/digits/train.py")
    assert mod_spec and mod_spec.loader
    train = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(train)
    data = work / "digits"
    log("training the digits CNN")
    train.main(["--out", str(data)])
    spec = json.loads(json.dumps(spec))
    for ref in (spec["model"], spec["data"]["calibration"], spec["data"]["validation"]):
        ref["uri"] = str(data / ref["uri"])
    log("optimizing it with the worker (the example's spec)")
    _, report, seconds = run_pipeline(spec, NAME, work / "artifact")
    log(f"artifact {report['artifact']['modelFile']} ({report['optimization']['recipe']}) in {seconds:.1f} s")
    return work / "artifact" / report["artifact"]["modelFile"], report["optimization"]["recipe"], np.load(data / "validation.npz")["input"]


def ort_alone_ms(model_file: Path, x: np.ndarray, threads: int | None, runs: int) -> float:
    """Median wall time of one standalone ONNX Runtime call, the session set up as model.py does."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(model_file), so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    for _ in range(200):
        sess.run(None, {name: x})
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        sess.run(None, {name: x})
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def row_line(label: str, m: sweep.Measured, base: sweep.Measured | None) -> str:
    r, s = m.load, m.server
    ratio = f"{r.throughput / base.load.throughput:.2f}x" if base is not None and base.load.throughput else "-"
    compute = s.compute_infer_ns / s.executions / 1e6 if s.executions else float("nan")
    queue = s.queue_ns / s.inferences / 1e6 if s.inferences else float("nan")
    return (
        f"| {label} | {r.concurrency} | {r.throughput:.0f} | {ratio} | {r.p50_ms:.2f} | {r.p95_ms:.2f} | {r.p99_ms:.2f} | "
        f"{s.mean_batch:.2f} | {queue:.3f} | {compute:.3f} | {r.errors} |"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_out(ap, "serving")
    ap.add_argument("--duration", type=float, default=4.0, help="counted seconds per round")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds per concurrency (configs alternate)")
    ap.add_argument("--warmup", type=float, default=2.0, help="uncounted seconds before each")
    ap.add_argument("--concurrency", default="1,4,16,64")
    ap.add_argument("--sweep-concurrency", type=int, default=tuning.DEFAULT_CONCURRENCY)
    ap.add_argument("--sweep-duration", type=float, default=5.0)
    ap.add_argument("--no-sweep", action="store_true")
    ap.add_argument("--model-file", type=Path, help="serve this ONNX file instead of building the digits artifact")
    ap.add_argument("--note", action="append", default=[])
    args = ap.parse_args()
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    cores = len(os.sched_getaffinity(0))
    load_start = os.getloadavg()
    spec = load_spec()
    generated = Serving.model_validate(spec["serving"])
    batch1 = generated.model_copy(update={"max_batch_size": 1, "dynamic_batching": DynamicBatching(enabled=False), "instance_count": 1})
    inputs = [TensorSpec.model_validate(t) for t in spec["model"]["inputs"]]
    outputs = [TensorSpec.model_validate(t) for t in spec["model"]["outputs"]]
    results: dict[str, list[sweep.Measured]] = {}
    table: list[tuning.SweepRow] = []
    chosen: tuning.SweepRow | None = None
    with tempfile.TemporaryDirectory(prefix="mo-serving-") as tmp:
        work = Path(tmp)
        if args.model_file:
            model_file, recipe = args.model_file, "given"
            images = np.random.default_rng(0).random((OVERHEAD_BATCH, 1, 8, 8), dtype=np.float32)
            x = np.ascontiguousarray(images[:1])
        else:
            model_file, recipe, images = build_artifact(work, spec)
            x = np.ascontiguousarray(images[:1])
        request = {inputs[0].name: x}
        model_kib = model_file.stat().st_size / 1024
        repo = work / "repository"
        repo.mkdir()
        server = TritonServer(repo, model_control_mode="explicit", log_file=work / "triton.log")
        server.start_and_wait()
        log(f"Triton up: grpc {server.grpc_endpoint}")
        ep = server.grpc_endpoint
        try:
            if not args.no_sweep:
                grid = tuning.sweep_grid(cores, min_max_batch=generated.max_batch_size)
                table = sweep.run_sweep(
                    ep, repo, "sweep", model_file, inputs=inputs, outputs=outputs, serving=generated,
                    target=spec["target"], grid=grid, request=request, concurrency=args.sweep_concurrency,
                    duration_s=args.sweep_duration, warmup_s=1.0, progress=log,
                )
                chosen = tuning.choose(table, min_max_batch=generated.max_batch_size)
                log(f"sweep chose {chosen.knobs.name if chosen else 'nothing'}")
            configs = {"batch1": batch1, "generated": generated}
            if chosen is not None:
                configs["tuned"] = tuning.apply_knobs(generated, chosen.knobs)
            for label, serving in configs.items():
                sweep.load_config(ep, repo, f"{NAME}_{label}", model_file, inputs=inputs, outputs=outputs, serving=serving,
                                  target=spec["target"], progress=log)
            for c in concurrencies:
                rounds: dict[str, list[sweep.Measured]] = {label: [] for label in configs}
                for i in range(args.rounds):
                    for label in configs:
                        rounds[label].append(sweep.measure_loaded(
                            ep, f"{NAME}_{label}", label=f"round {i + 1}/{args.rounds} {label}", request=request,
                            concurrency=c, duration_s=args.duration, warmup_s=args.warmup, progress=log,
                        ))
                for label, items in rounds.items():
                    results.setdefault(label, []).append(sweep.merge_measured(items))
            # The overhead at batch 8: one client sending 8-image requests to the generated config
            # (one request = one execution at concurrency 1, so compute/exec is that batch's).
            x8 = np.ascontiguousarray(images[:OVERHEAD_BATCH])
            batch8 = sweep.measure_loaded(
                ep, f"{NAME}_generated", label=f"generated, batch {OVERHEAD_BATCH} requests", request={inputs[0].name: x8},
                concurrency=1, duration_s=args.duration, warmup_s=args.warmup, progress=log,
            )
        finally:
            server.stop()
        ort_ms = {(b, t): ort_alone_ms(model_file, xb, t, 3000) for b, xb in ((1, x), (OVERHEAD_BATCH, x8)) for t in (None, 1)}
        b1 = results["batch1"][0]
    load_end = os.getloadavg()

    lines = [
        "# Serving benchmark: generated vs batch-1 Triton config",
        "",
        f"Run with `python benchmarks/serving.py` on {time.strftime('%Y-%m-%d %H:%M %Z')}.",
        "",
        "## Conditions",
        "",
        f"- machine: {cpu_model()}, {cores} cores (shared with other work), {platform.system()} {platform.release()}, Python {platform.python_version()}",
        f"- load average (1/5/15 min) at start {' '.join(f'{v:.2f}' for v in load_start)}, at end {' '.join(f'{v:.2f}' for v in load_end)}",
        "- server: Triton 2.51 from the nvidia-pytriton wheel, Python backend running ONNX Runtime "
        f"{__import__('onnxruntime').__version__} (operator/model_operator/triton/python_model.py), CPU, one process, explicit model control",
        "- load generator: tritonclient's asyncio gRPC client (`model_operator.triton.loadgen`), closed loop: N clients, each sends "
        "its next request when the previous one is answered; one Python process on the same machine (its CPU is taken from the server's)",
        f"- each concurrency: {args.rounds} interleaved rounds (batch1, generated, tuned, batch1, ...), each {args.warmup:g} s "
        f"warm-up (not counted) then {args.duration:g} s counted; latencies pooled over the rounds; one request = one image, batch 1 "
        f"[1, 1, 8, 8] float32; latency = the client's round trip",
        f"- model: the digits CNN (examples/digits, 137k params) optimized by the worker with the example's spec: recipe `{recipe}`, "
        f"{model_kib:.0f} KiB",
        "- ONNX Runtime threads: the model's own choice unless a config sets intraOpThreads",
        "- every config is loaded at once under its own name (idle ones cost no CPU), so the rounds alternate without reloading",
        "- `mean batch`, `queue` and `compute/exec` come from Triton's statistics extension (deltas over the step): requests per "
        "model execution, queue time per request, compute time per execution (the Python backend's round trip to its stub + ONNX Runtime)",
        "",
        "## Configs",
        "",
        "| config | max batch | dynamic batching | queue delay | preferred | instances | intra-op threads |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, s in configs.items():
        db = s.dynamic_batching
        lines.append(
            f"| {label} | {s.max_batch_size} | {'on' if db.enabled else 'off'} | {db.max_queue_delay_microseconds if db.enabled else '-'} us | "
            f"{','.join(map(str, db.preferred_batch_sizes)) or '-'} | {s.instance_count} | {s.intra_op_threads or 'ORT default'} |"
        )
    lines += [
        "",
        "## Results",
        "",
        "| config | clients | req/s | vs batch1 | p50 ms | p95 ms | p99 ms | mean batch | queue ms | compute/exec ms | errors |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    base_by_c = {m.load.concurrency: m for m in results["batch1"]}
    for label, ms in results.items():
        for m in ms:
            lines.append(row_line(label, m, base_by_c.get(m.load.concurrency)))
    lines.append("")
    lines.append("## Goal: >= 3x the batch-1 throughput at 16 clients, p95 no worse")
    lines.append("")
    if 16 in base_by_c:
        b = base_by_c[16].load
        for label in ("generated", "tuned"):
            m16 = next((m for m in results.get(label, []) if m.load.concurrency == 16), None)
            if m16 is None:
                continue
            ratio = m16.load.throughput / b.throughput
            verdict = "MET" if ratio >= GOAL_RATIO and m16.load.p95_ms <= b.p95_ms else "MISSED"
            lines.append(
                f"- {label}: {ratio:.2f}x the batch-1 throughput ({m16.load.throughput:.0f} vs {b.throughput:.0f} req/s), "
                f"p95 {m16.load.p95_ms:.2f} vs {b.p95_ms:.2f} ms: **{verdict}**"
                + (f" (short by {GOAL_RATIO / ratio:.2f}x)" if ratio < GOAL_RATIO else "")
            )
    lines.append("")
    if table:
        lines += [
            f"## Autotune sweep ({len(table)} configs at {args.sweep_concurrency} clients, {args.sweep_duration:g} s each)",
            "",
            "The table `triton.tuning.choose` reads (highest throughput whose p95 is no worse than the batch-1 row's; within 3 % the "
            "simplest config wins).",
            "",
            "| config | max batch | queue delay us | instances | intra-op threads | req/s | p50 ms | p95 ms | p99 ms | errors | chosen |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in table:
            k = r.knobs
            lines.append(
                f"| {k.name} | {k.max_batch_size} | {k.max_queue_delay_us if k.dynamic_batching else '-'} | {k.instance_count} | "
                f"{k.intra_op_threads} | {r.throughput:.0f} | {r.p50_ms:.2f} | {r.p95_ms:.2f} | {r.p99_ms:.2f} | {r.errors} | "
                f"{'**yes**' if chosen is r else ''} |"
            )
        lines.append("")
    overhead = [
        "## Python-backend overhead (one client, ONNX Runtime's default threads on both sides)",
        "",
        "| batch | ORT alone, default threads | ORT alone, 1 thread | Triton compute per execution | Triton round trip p50 (client) | "
        "backend overhead per execution | x the model's time |",
        "|---|---|---|---|---|---|---|",
    ]
    for batch, m in ((1, b1), (OVERHEAD_BATCH, batch8)):
        s1 = m.server
        compute = s1.compute_infer_ns / s1.executions / 1e6 if s1.executions else float("nan")
        alone = ort_ms[(batch, None)]
        overhead.append(
            f"| {batch} | {alone:.3f} ms | {ort_ms[(batch, 1)]:.3f} ms | {compute:.3f} ms | {m.load.p50_ms:.3f} ms | "
            f"{compute - alone:.3f} ms | {compute / alone:.1f}x |"
        )
    lines += [
        *overhead,
        "",
        "ORT alone: `session.run` on the same artifact and input, median of 3000 after 200 warm-up calls, in this process after "
        "the server stopped. Triton compute per execution: Triton's compute_infer statistic (the Python backend's round trip to "
        "its stub process through shared memory, the request/response tensors, and ONNX Runtime); batch 1 on the batch1 "
        f"config, batch {OVERHEAD_BATCH} as one {OVERHEAD_BATCH}-image request to the generated config. The rest of the round "
        "trip is gRPC, Triton's core and the Python client.",
        "",
        "## Notes",
        "",
        *[f"- {n}" for n in args.note],
    ]
    write_result(args.out, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())

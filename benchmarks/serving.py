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
        [--no-sweep] [--model-file artifact.onnx --model-name effnet --model-desc "..." --recipe "..."]

`--model-file` serves another ONNX file with the same three configs: its input and output names,
dtypes and shapes are read from the file (`onnx_signature`), each request is one sample of random
values in [0, 1) (`sweep.sample_inputs`, batch 1 on the dynamic first axis).

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
from model_operator.optimize.load import onnx_signature  # noqa: E402 - the worker's own reading of a model's tensors
from model_operator.triton import sweep, tuning  # noqa: E402
from model_operator.triton.server import TritonServer  # noqa: E402

NAME = "digits"
GOAL_RATIO = 3.0
OVERHEAD_BATCH = 8
ORT_ALONE_RUNS = 3000
ORT_ALONE_BUDGET_S = 4.0


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


def describe_request(request: dict[str, np.ndarray]) -> str:
    """`[1, 3, 224, 224] float32` (one per input, `name [shape] dtype` when there are several)."""
    parts = [f"{list(a.shape)} {a.dtype}" for a in request.values()]
    return parts[0] if len(parts) == 1 else ", ".join(f"{n} {p}" for n, p in zip(request, parts, strict=True))


def ort_alone_ms(model_file: Path, feeds: dict[str, np.ndarray], threads: int | None, runs: int, budget_s: float) -> tuple[float, int, int]:
    """Median wall time of one standalone ONNX Runtime call, the session set up as model.py does:
    (ms, calls counted, warm-up calls). At most `runs` counted calls after at most 200 warm-up
    ones, each phase cut at `budget_s` (a model of several ms would take minutes otherwise)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(model_file), so, providers=["CPUExecutionProvider"])
    warm = 0
    end = time.perf_counter() + budget_s / 4
    while warm < 200 and (warm < 5 or time.perf_counter() < end):
        sess.run(None, feeds)
        warm += 1
    times: list[float] = []
    end = time.perf_counter() + budget_s
    while len(times) < runs and (len(times) < 20 or time.perf_counter() < end):
        t0 = time.perf_counter()
        sess.run(None, feeds)
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times), len(times), warm


def compute_per_execution_ms(s: sweep.ServerStats, request_batch: int = 1) -> float:
    """Mean time of one model execution from Triton's statistics. Triton adds an execution's
    compute time to every request the execution served (inference_stats are per request), so the
    sum is divided by the number of requests (inferences / the batch each request carries), not by
    the number of executions: with dynamic batching that would count each execution mean-batch
    times over."""
    requests = s.inferences / request_batch
    return s.compute_infer_ns / requests / 1e6 if requests else float("nan")


def row_line(label: str, m: sweep.Measured, base: sweep.Measured | None) -> str:
    r, s = m.load, m.server
    ratio = f"{r.throughput / base.load.throughput:.2f}x" if base is not None and base.load.throughput else "-"
    compute = compute_per_execution_ms(s)
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
    ap.add_argument("--model-file", type=Path, help="serve this ONNX file instead of building the digits artifact (signature read from it)")
    ap.add_argument("--model-name", default=None, help="Triton name prefix and short label for --model-file (default: the file's stem)")
    ap.add_argument("--model-desc", default=None, help="what --model-file is, for the results' conditions")
    ap.add_argument("--recipe", default="given", help="the recipe that made --model-file, for the results' conditions")
    ap.add_argument("--note", action="append", default=[])
    args = ap.parse_args()
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    cores = len(os.sched_getaffinity(0))
    load_start = os.getloadavg()
    spec = load_spec()
    generated = Serving.model_validate(spec["serving"])
    batch1 = generated.model_copy(update={"max_batch_size": 1, "dynamic_batching": DynamicBatching(enabled=False), "instance_count": 1})
    if args.model_file:
        import onnx

        inputs, outputs = onnx_signature(onnx.load(str(args.model_file), load_external_data=False))
        name = "".join(ch if ch.isalnum() or ch in "_-" else "_" for ch in (args.model_name or args.model_file.stem))
    else:
        inputs = [TensorSpec.model_validate(t) for t in spec["model"]["inputs"]]
        outputs = [TensorSpec.model_validate(t) for t in spec["model"]["outputs"]]
        name = NAME
    results: dict[str, list[sweep.Measured]] = {}
    table: list[tuning.SweepRow] = []
    chosen: tuning.SweepRow | None = None
    with tempfile.TemporaryDirectory(prefix="mo-serving-") as tmp:
        work = Path(tmp)
        if args.model_file:
            model_file, recipe = args.model_file, args.recipe
            batch8 = sweep.sample_inputs(inputs, batch=OVERHEAD_BATCH)
        else:
            model_file, recipe, images = build_artifact(work, spec)
            batch8 = {inputs[0].name: np.ascontiguousarray(images[:OVERHEAD_BATCH])}
        request = {k: np.ascontiguousarray(v[:1]) for k, v in batch8.items()}
        log(f"serving {model_file.name}: inputs {', '.join(f'{t.name} {t.shape} {t.dtype.value}' for t in inputs)}; "
            f"outputs {', '.join(f'{t.name} {t.shape} {t.dtype.value}' for t in outputs)}")
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
                sweep.load_config(ep, repo, f"{name}_{label}", model_file, inputs=inputs, outputs=outputs, serving=serving,
                                  target=spec["target"], progress=log)
            for c in concurrencies:
                rounds: dict[str, list[sweep.Measured]] = {label: [] for label in configs}
                for i in range(args.rounds):
                    for label in configs:
                        rounds[label].append(sweep.measure_loaded(
                            ep, f"{name}_{label}", label=f"round {i + 1}/{args.rounds} {label}", request=request,
                            concurrency=c, duration_s=args.duration, warmup_s=args.warmup, progress=log,
                        ))
                for label, items in rounds.items():
                    results.setdefault(label, []).append(sweep.merge_measured(items))
            # The overhead at batch 8: one client sending 8-image requests to the generated config
            # (one request = one execution at concurrency 1, so compute/exec is that batch's).
            measured8 = sweep.measure_loaded(
                ep, f"{name}_generated", label=f"generated, batch {OVERHEAD_BATCH} requests", request=batch8,
                concurrency=1, duration_s=args.duration, warmup_s=args.warmup, progress=log,
            )
        finally:
            server.stop()
        ort_ms = {(b, t): ort_alone_ms(model_file, feeds, t, ORT_ALONE_RUNS, ORT_ALONE_BUDGET_S)
                  for b, feeds in ((1, request), (OVERHEAD_BATCH, batch8)) for t in (None, 1)}
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
        f"warm-up (not counted) then {args.duration:g} s counted; latencies pooled over the rounds; one request = one sample, batch 1 "
        f"{describe_request(request)}{'' if args.model_file else ' (held-out digits images)'}"
        f"{' of random values in [0, 1)' if args.model_file else ''}; latency = the client's round trip",
        (f"- model: {args.model_desc or model_file.name}: recipe `{recipe}`, {model_kib:.0f} KiB; inputs "
         f"{', '.join(f'{t.name} {t.shape} {t.dtype.value}' for t in inputs)}, outputs "
         f"{', '.join(f'{t.name} {t.shape} {t.dtype.value}' for t in outputs)} (read from the file)"
         if args.model_file else
         f"- model: the digits CNN (examples/digits, 137k params) optimized by the worker with the example's spec: recipe `{recipe}`, "
         f"{model_kib:.0f} KiB"),
        "- configs: the serving block of examples/digits/modeldeployment.yaml (target edge, Python backend) for every model",
        "- ONNX Runtime threads: the model's own choice unless a config sets intraOpThreads",
        "- every config is loaded at once under its own name (idle ones cost no CPU), so the rounds alternate without reloading",
        "- `mean batch`, `queue` and `compute/exec` come from Triton's statistics extension (deltas over the step): requests per "
        "model execution, queue time per request, compute time per execution (the Python backend's round trip to its stub + ONNX Runtime; "
        "Triton adds an execution's time to each request it served, so the sum is divided by the requests, not the executions)",
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
    for batch, m in ((1, b1), (OVERHEAD_BATCH, measured8)):
        s1 = m.server
        compute = compute_per_execution_ms(s1, batch)
        alone = ort_ms[(batch, None)][0]
        overhead.append(
            f"| {batch} | {alone:.3f} ms | {ort_ms[(batch, 1)][0]:.3f} ms | {compute:.3f} ms | {m.load.p50_ms:.3f} ms | "
            f"{compute - alone:.3f} ms | {compute / alone:.1f}x |"
        )
    lines += [
        *overhead,
        "",
        "ORT alone: `session.run` on the same artifact and input, median of "
        + ("/".join(str(v[1]) for v in ort_ms.values()) + " calls after " + "/".join(str(v[2]) for v in ort_ms.values())
           + " warm-up calls (batch 1 default threads, batch 1 one thread, batch 8 default, batch 8 one thread; at most "
           f"{ORT_ALONE_RUNS} after 200, each phase cut at {ORT_ALONE_BUDGET_S:g} s)")
        + ", in this process after "
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

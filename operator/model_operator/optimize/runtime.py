"""Running models the same way for every measurement: ONNX Runtime sessions and torch modules
with the same number of threads, batched evaluation, and latency measured after a warm-up that
waits until the runtime has settled, in interleaved rounds whose spread is reported."""

from __future__ import annotations

import math
import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np

from ..api.types import TensorSpec

GRAPH_LEVELS: Final = ("disable", "basic", "extended", "all")
EVAL_BATCH: Final = 32


def threads() -> int:
    """Threads for every runtime: MODEL_OPERATOR_THREADS, else the CPUs this process may use
    (affinity, capped by a cgroup CPU quota)."""
    env = os.environ.get("MODEL_OPERATOR_THREADS")
    if env:
        return max(1, int(env))
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            n = min(n, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, n)


def configure_torch(n: int) -> None:
    import torch

    torch.set_num_threads(n)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set once in this process
        pass


class OrtRunner:
    def __init__(self, model: Path | bytes, *, level: str = "all", n_threads: int | None = None) -> None:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = n_threads or threads()
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.log_severity_level = 3
        so.graph_optimization_level = {
            "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[level]
        src = model if isinstance(model, bytes) else str(model)
        self.session = ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self.session.run(None, {k: feeds[k] for k in self.input_names})


class TorchRunner:
    def __init__(self, module: Any, inputs: Sequence[TensorSpec]) -> None:
        self.module = module
        self.input_names = [t.name for t in inputs]

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        import torch

        from .load import torch_outputs

        args = [torch.from_numpy(np.ascontiguousarray(feeds[n])) for n in self.input_names]
        with torch.inference_mode():
            out = self.module(*args)
        return [o.detach().numpy() for o in torch_outputs(out)]


def run_all(runner: OrtRunner | TorchRunner, inputs: dict[str, np.ndarray], batch: int = EVAL_BATCH) -> list[np.ndarray]:
    """Outputs for every sample, evaluated in batches of `batch`, concatenated."""
    n = len(next(iter(inputs.values())))
    parts: list[list[np.ndarray]] = []
    for start in range(0, n, batch):
        parts.append(runner.run({k: v[start : start + batch] for k, v in inputs.items()}))
    return [np.concatenate([p[i] for p in parts]) for i in range(len(parts[0]))]


def latency_feeds(inputs: dict[str, np.ndarray], batch: int) -> dict[str, np.ndarray]:
    """The first `batch` samples (repeated when there are fewer)."""
    out = {}
    for k, v in inputs.items():
        reps = math.ceil(batch / len(v))
        out[k] = np.ascontiguousarray(np.concatenate([v] * reps)[:batch]) if reps > 1 else np.ascontiguousarray(v[:batch])
    return out


WARM_WINDOW: Final = 5
WARM_SETTLED: Final = 0.10
WARM_MAX_CALLS: Final = 400
WARM_MAX_S: Final = 20.0


def warm_up(fn: Callable[[], Any], *, min_calls: int = 10, max_calls: int = WARM_MAX_CALLS, max_s: float = WARM_MAX_S) -> int:
    """Untimed calls until the runtime has settled: at least `min_calls`, then windows of
    WARM_WINDOW calls until a window's median is within WARM_SETTLED of the previous one's
    (TorchScript's profiling executor profiles and recompiles over its first calls; ONNX Runtime
    allocates its arenas on the first few). Bounded by `max_calls` and `max_s`. Returns the
    number of calls made."""
    start = time.perf_counter()
    times: list[float] = []
    while len(times) < max_calls and time.perf_counter() - start < max_s:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        n = len(times)
        if n >= max(min_calls, 2 * WARM_WINDOW) and n % WARM_WINDOW == 0:
            last = statistics.median(times[-WARM_WINDOW:])
            prev = statistics.median(times[-2 * WARM_WINDOW : -WARM_WINDOW])
            if abs(last - prev) <= WARM_SETTLED * prev:
                break
    return len(times)


def timed_block(fn: Callable[[], Any], *, min_runs: int, budget_s: float, max_runs: int = 5000) -> list[float]:
    """Wall times (ms) of at least `min_runs` calls, more while under `budget_s` seconds."""
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < max_runs and (len(times) < min_runs or time.perf_counter() - start < budget_s):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000.0)
    return times


def measure_latency(fn: Callable[[], Any], *, min_runs: int = 20, max_runs: int = 5000, budget_s: float | None = None) -> float:
    """Median wall time of `fn` in milliseconds after warm_up: at least `min_runs` timed calls,
    more while under `budget_s` seconds (default MODEL_OPERATOR_LATENCY_BUDGET_S, else 1.5; at
    most `max_runs`)."""
    if budget_s is None:
        budget_s = latency_budget()
    warm_up(fn)
    return statistics.median(timed_block(fn, min_runs=min_runs, budget_s=budget_s, max_runs=max_runs))


def latency_budget() -> float:
    """Seconds of timed calls per measured model (MODEL_OPERATOR_LATENCY_BUDGET_S, default 1.5)."""
    return float(os.environ.get("MODEL_OPERATOR_LATENCY_BUDGET_S", "1.5"))


BLOCK_QUANTILE: Final = 0.2


def block_ms(times: Sequence[float]) -> float:
    """A block's figure: its BLOCK_QUANTILE quantile. A call the scheduler interrupted (another
    process on the node, a thread of a parallel region descheduled) only ever adds time, so a low
    quantile estimates the model's own latency better than the median does on a busy node."""
    return float(np.quantile(np.asarray(times, dtype=np.float64), BLOCK_QUANTILE))


@dataclass(frozen=True)
class Latency:
    """A latency from interleaved rounds: `ms` is the median of the rounds' figures (block_ms),
    `spread` the relative range of those figures ((max - min) / ms), `rounds` how many were
    measured."""

    ms: float
    spread: float
    rounds: int


def summarize_rounds(medians: Sequence[float]) -> Latency:
    if not medians:
        raise ValueError("no rounds measured")
    mid = statistics.median(medians)
    spread = (max(medians) - min(medians)) / mid if mid > 0 else 0.0
    return Latency(ms=mid, spread=spread, rounds=len(medians))


def measure_interleaved(
    fns: Sequence[Callable[[], Any]],
    *,
    rounds: int = 5,
    budget_s: float | None = None,
    min_runs: int = 5,
    rounds_for: Callable[[int], int] | None = None,
    stop: Callable[[], bool] = lambda: False,
) -> list[Latency]:
    """Latency of each callable, measured side by side: every callable is warmed up (until
    settled), then `rounds` rounds each time every callable for a block of at least `min_runs`
    calls (budget_s / rounds seconds; budget default latency_budget()). A busy machine's swings
    hit every callable alike and show up in the spread. `rounds_for(i)` may give callable i fewer
    rounds (at least 1); `stop()` ends the measurement after a complete round."""
    budget = latency_budget() if budget_s is None else budget_s
    want = [max(1, min(rounds, rounds_for(i) if rounds_for else rounds)) for i in range(len(fns))]
    for fn in fns:
        warm_up(fn)
    medians: list[list[float]] = [[] for _ in fns]
    for rnd in range(rounds):
        if rnd > 0 and stop():
            break
        for i, fn in enumerate(fns):
            if rnd < want[i]:
                medians[i].append(block_ms(timed_block(fn, min_runs=min_runs, budget_s=budget / rounds)))
    return [summarize_rounds(m) for m in medians]

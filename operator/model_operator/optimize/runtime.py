"""Running models the same way for every measurement: ONNX Runtime sessions and torch modules
with the same number of threads, batched evaluation, and median latency after warm-up."""

from __future__ import annotations

import math
import os
import statistics
import time
from collections.abc import Callable, Sequence
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


def warm_up(fn: Callable[[], Any], calls: int = 10, max_calls: int = 100) -> None:
    """At least `calls` untimed calls, more while the last one is still much slower than the
    fastest so far (TorchScript's profiling executor runs its first several calls slowly)."""
    best = float("inf")
    for i in range(max_calls):
        t0 = time.perf_counter()
        fn()
        took = time.perf_counter() - t0
        best = min(best, took)
        if i + 1 >= calls and took <= 2 * best:
            return


def measure_latency(fn: Callable[[], Any], *, min_runs: int = 20, max_runs: int = 5000, budget_s: float | None = None) -> float:
    """Median wall time of `fn` in milliseconds after warm_up: at least `min_runs` timed calls,
    more while under `budget_s` seconds (default MODEL_OPERATOR_LATENCY_BUDGET_S, else 1.5; at
    most `max_runs`)."""
    if budget_s is None:
        budget_s = float(os.environ.get("MODEL_OPERATOR_LATENCY_BUDGET_S", "1.5"))
    warm_up(fn)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < max_runs and (len(times) < min_runs or time.perf_counter() - start < budget_s):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000.0

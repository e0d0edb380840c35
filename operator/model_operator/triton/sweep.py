"""Measure Triton configs of one model on a running Triton (explicit model control): write the
config, load the model, drive it with the load generator, read Triton's own statistics, unload.

Used by `benchmarks/serving.py` and by the serving autotune (`triton.tuning` says what to try
and what to keep; this module only measures). Talks to Triton over gRPC; the repository is a
directory this process writes and the server reads.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..api.types import DType, Serving, Target, TensorSpec
from .loadgen import LoadResult, merge, run_load
from .repository import write_repository
from .tuning import SweepRow, TritonKnobs, apply_knobs

log = logging.getLogger(__name__)

__all__ = ["Measured", "ServerStats", "load_config", "measure_loaded", "merge_measured", "run_sweep", "sample_inputs", "stats_delta", "unload"]


@dataclass(frozen=True)
class ServerStats:
    """Triton's cumulative statistics of one model (the statistics extension)."""

    inferences: int  # requests (batch items) answered
    executions: int  # model executions (a batch of several requests is one)
    queue_ns: int
    compute_infer_ns: int
    success_ns: int

    @property
    def mean_batch(self) -> float:
        return self.inferences / self.executions if self.executions else float("nan")


def stats_delta(before: ServerStats, after: ServerStats) -> ServerStats:
    return ServerStats(*(a - b for a, b in zip(_fields(after), _fields(before))))


def _fields(s: ServerStats) -> tuple[int, int, int, int, int]:
    return (s.inferences, s.executions, s.queue_ns, s.compute_infer_ns, s.success_ns)


def read_stats(client: Any, model: str) -> ServerStats:
    raw = client.get_inference_statistics(model_name=model, as_json=True)
    st = (raw.get("model_stats") or [{}])[0]
    inf = st.get("inference_stats", {})

    def ns(key: str) -> int:
        return int(inf.get(key, {}).get("ns", 0))

    return ServerStats(
        inferences=int(st.get("inference_count", 0)),
        executions=int(st.get("execution_count", 0)),
        queue_ns=ns("queue"),
        compute_infer_ns=ns("compute_infer"),
        success_ns=ns("success"),
    )


def sample_inputs(inputs: Sequence[TensorSpec], batch: int = 1, dynamic: int = 16, seed: int = 0) -> dict[str, np.ndarray]:
    """One request's inputs from the signature: `batch` on a dynamic first axis, `dynamic` on other
    dynamic axes; floats uniform in [0, 1), integers 1 (a valid token id / mask everywhere)."""
    rng = np.random.default_rng(seed)
    out = {}
    for spec in inputs:
        shape = [(batch if i == 0 else dynamic) if d == -1 else d for i, d in enumerate(spec.shape)]
        dtype = np.dtype(DType(spec.dtype).value)
        if dtype.kind == "f":
            out[spec.name] = rng.random(shape).astype(dtype)
        else:
            out[spec.name] = np.ones(shape, dtype=dtype)
    return out


@dataclass(frozen=True)
class Measured:
    """One config at one concurrency: the client's figures and the server's deltas."""

    label: str
    load: LoadResult
    server: ServerStats

    def row(self, knobs: TritonKnobs) -> SweepRow:
        r = self.load
        return SweepRow(knobs, r.throughput, r.p50_ms, r.p95_ms, r.p99_ms, r.errors, r.requests)


def load_config(
    grpc_endpoint: str,
    repository: Path,
    name: str,
    model_file: Path,
    *,
    inputs: Sequence[TensorSpec],
    outputs: Sequence[TensorSpec],
    serving: Serving,
    target: Target | str,
    progress: Callable[[str], None] = log.info,
) -> None:
    """Write `<repository>/<name>/` for `serving` and have the running Triton load it."""
    import tritonclient.grpc as grpcclient  # noqa: PLC0415

    write_repository(
        repository, name, model_file, artifact_format="onnx", inputs=inputs, outputs=outputs, serving=serving, target=target
    )
    client = grpcclient.InferenceServerClient(url=grpc_endpoint)
    try:
        t0 = time.monotonic()
        client.load_model(name)
        progress(f"{name}: loaded in {time.monotonic() - t0:.1f} s")
    finally:
        client.close()


def unload(grpc_endpoint: str, name: str) -> None:
    import tritonclient.grpc as grpcclient  # noqa: PLC0415

    client = grpcclient.InferenceServerClient(url=grpc_endpoint)
    try:
        client.unload_model(name)
    finally:
        client.close()


def measure_loaded(
    grpc_endpoint: str,
    name: str,
    *,
    label: str,
    request: Mapping[str, np.ndarray],
    concurrency: int,
    duration_s: float,
    warmup_s: float,
    progress: Callable[[str], None] = log.info,
) -> Measured:
    """One load step on a loaded model: the client's figures and Triton's statistics over it."""
    import tritonclient.grpc as grpcclient  # noqa: PLC0415

    client = grpcclient.InferenceServerClient(url=grpc_endpoint)
    try:
        before = read_stats(client, name)
        res = run_load(grpc_endpoint, name, request, concurrency=concurrency, duration_s=duration_s, warmup_s=warmup_s)
        delta = stats_delta(before, read_stats(client, name))
    finally:
        client.close()
    progress(
        f"{label} @ {concurrency}: {res.throughput:.0f} req/s, p50 {res.p50_ms:.2f} ms, p95 {res.p95_ms:.2f} ms, "
        f"p99 {res.p99_ms:.2f} ms, mean batch {delta.mean_batch:.2f}, errors {res.errors}"
        + (f" ({res.first_error})" if res.first_error else "")
    )
    return Measured(label, res, delta)


def merge_measured(items: Sequence[Measured]) -> Measured:
    """Interleaved rounds of one config at one concurrency as one step (latencies pooled, statistics summed)."""
    total = ServerStats(*(sum(col) for col in zip(*(_fields(m.server) for m in items))))
    return Measured(items[0].label, merge([m.load for m in items]), total)


def run_sweep(
    grpc_endpoint: str,
    repository: Path,
    name: str,
    model_file: Path,
    *,
    inputs: Sequence[TensorSpec],
    outputs: Sequence[TensorSpec],
    serving: Serving,
    target: Target | str,
    grid: Sequence[TritonKnobs],
    request: Mapping[str, np.ndarray],
    concurrency: int,
    duration_s: float,
    warmup_s: float,
    progress: Callable[[str], None] = log.info,
) -> list[SweepRow]:
    """Every config of `grid` at one concurrency, in order: the sweep's table."""
    table = []
    for i, knobs in enumerate(grid, 1):
        progress(f"sweep {i}/{len(grid)}: {knobs.name}")
        load_config(
            grpc_endpoint, repository, name, model_file, inputs=inputs, outputs=outputs, serving=apply_knobs(serving, knobs),
            target=target, progress=progress,
        )
        try:
            m = measure_loaded(
                grpc_endpoint, name, label=knobs.name, request=request, concurrency=concurrency, duration_s=duration_s,
                warmup_s=warmup_s, progress=progress,
            )
        finally:
            unload(grpc_endpoint, name)
        table.append(m.row(knobs))
    return table

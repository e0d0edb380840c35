"""A closed-loop load generator for a Triton model: `concurrency` clients, each sending its next
request as soon as the previous one is answered, over gRPC with tritonclient's asyncio client
(`tritonclient.grpc.aio`; NVIDIA's perf_analyzer is not to be had here).

One process, one event loop: the generator's own CPU time counts against the machine it runs on
(say so next to any number it produces). Requests answered during the warm-up are not counted;
the window that is counted starts when the warm-up ends and closes at the deadline (requests in
flight at the deadline are waited for and not counted).

`summarize` (pure) turns latencies into the figures the benchmark and the autotune sweep report:
throughput, p50/p95/p99 (nearest rank), errors.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..api.types import DType
from .config import TRITON_DTYPES

__all__ = ["LoadResult", "merge", "percentile", "summarize", "run_load", "triton_datatype"]


@dataclass(frozen=True)
class LoadResult:
    """What one load step measured: requests answered in the counted window."""

    concurrency: int
    requests: int
    errors: int
    seconds: float
    throughput: float  # answered requests per second (errors excluded)
    p50_ms: float
    p95_ms: float
    p99_ms: float
    mean_ms: float
    first_error: str = ""
    latencies_ms: tuple[float, ...] = field(default=(), repr=False, compare=False)

    def as_dict(self) -> dict[str, Any]:
        return {
            "concurrency": self.concurrency,
            "requests": self.requests,
            "errors": self.errors,
            "seconds": round(self.seconds, 3),
            "throughput": round(self.throughput, 2),
            "p50Ms": round(self.p50_ms, 3),
            "p95Ms": round(self.p95_ms, 3),
            "p99Ms": round(self.p99_ms, 3),
            "meanMs": round(self.mean_ms, 3),
        }


def percentile(values: Sequence[float], q: float) -> float:
    """The nearest-rank `q`-th percentile (0 < q <= 100) of `values`; NaN when there are none."""
    if not 0 < q <= 100:
        raise ValueError(f"percentile must be in (0, 100], got {q}")
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return float(ordered[rank - 1])


def summarize(latencies_ms: Sequence[float], errors: int, seconds: float, concurrency: int, first_error: str = "") -> LoadResult:
    """Figures of one counted window: `latencies_ms` of the answered requests, `errors` failed ones."""
    if seconds <= 0:
        raise ValueError("the counted window must be longer than 0 s")
    n = len(latencies_ms)
    return LoadResult(
        concurrency=concurrency,
        requests=n,
        errors=errors,
        seconds=seconds,
        throughput=n / seconds,
        p50_ms=percentile(latencies_ms, 50),
        p95_ms=percentile(latencies_ms, 95),
        p99_ms=percentile(latencies_ms, 99),
        mean_ms=float(sum(latencies_ms) / n) if n else math.nan,
        first_error=first_error,
        latencies_ms=tuple(latencies_ms),
    )


def merge(results: Sequence[LoadResult]) -> LoadResult:
    """Several counted windows of one config at one concurrency as one: latencies pooled, time summed."""
    if not results or len({r.concurrency for r in results}) != 1:
        raise ValueError("merge needs at least one result, all at the same concurrency")
    lat = [x for r in results for x in r.latencies_ms]
    first = next((r.first_error for r in results if r.first_error), "")
    return summarize(lat, sum(r.errors for r in results), sum(r.seconds for r in results), results[0].concurrency, first)


_DATATYPES = {np.dtype(DType(k).value): v.removeprefix("TYPE_") for k, v in TRITON_DTYPES.items()}


def triton_datatype(arr: np.ndarray) -> str:
    """Triton's wire data type name (FP32, INT64, ...) of a numpy array."""
    try:
        return _DATATYPES[arr.dtype]
    except KeyError:
        raise ValueError(f"no Triton data type for numpy {arr.dtype}") from None


async def _closed_loop(
    endpoint: str, model: str, inputs: Mapping[str, np.ndarray], concurrency: int, duration_s: float, warmup_s: float
) -> LoadResult:
    from tritonclient.grpc import aio as grpcaio  # noqa: PLC0415 - heavy import, only when load is generated

    client = grpcaio.InferenceServerClient(url=endpoint)
    infer_inputs = []
    for name, arr in inputs.items():
        item = grpcaio.InferInput(name, list(arr.shape), triton_datatype(arr))
        item.set_data_from_numpy(np.ascontiguousarray(arr))
        infer_inputs.append(item)
    latencies: list[float] = []
    errors = 0
    first_error = ""
    loop = asyncio.get_running_loop()
    start = loop.time()
    counted_from = start + warmup_s
    deadline = counted_from + duration_s

    async def one_client() -> None:
        nonlocal errors, first_error
        while True:
            t0 = time.perf_counter()
            if loop.time() >= deadline:
                return
            try:
                await client.infer(model, infer_inputs)
                ok = True
            except Exception as exc:  # noqa: BLE001 - counted and reported, the load goes on
                ok = False
                if not first_error:
                    first_error = str(exc)[:300]
            t1 = time.perf_counter()
            now = loop.time()
            if counted_from <= now <= deadline:
                if ok:
                    latencies.append((t1 - t0) * 1000.0)
                else:
                    errors += 1

    try:
        await asyncio.gather(*(one_client() for _ in range(concurrency)))
    finally:
        await client.close()
    return summarize(latencies, errors, duration_s, concurrency, first_error)


def run_load(
    endpoint: str,
    model: str,
    inputs: Mapping[str, np.ndarray],
    *,
    concurrency: int,
    duration_s: float = 10.0,
    warmup_s: float = 2.0,
) -> LoadResult:
    """Drive `model` at `endpoint` (host:port of Triton's gRPC) with `concurrency` closed-loop
    clients sending `inputs` (name -> array, batch axis included) for `warmup_s` + `duration_s`."""
    if concurrency < 1:
        raise ValueError("concurrency must be >= 1")
    return asyncio.run(_closed_loop(endpoint, model, inputs, concurrency, duration_s, warmup_s))

"""The serving autotune's pure parts: the bounded grid of Triton configs a sweep measures, and
the choice of the config to serve from the measured table.

Pure: no processes, no clients. The sweep itself (a real Triton, a load generator) is
`triton.sweep`; this module only says what to try and what to keep.

Grid (`sweep_grid`): the batch-1, single-instance baseline first, then every combination of
max batch size (at least the spec's) x queue delay x instance count, with ONNX Runtime's intra-op threads = cores /
instances (at least 1), instance counts above the core count left out, cut to `limit` rows.

Choice (`choose`), a function of the table only:
1. rows with errors, no answered request, or no numbers are out, and so are rows whose max batch
   size is below the spec's (`min_max_batch`: the baseline is then a reference, never served);
2. the baseline is the batch-1 row (the first row when none is marked as baseline); a row whose
   p95 is above the baseline's p95 x `p95_slack` is out ("p95 no worse");
3. among the rest, the highest throughput wins; rows within `tie` (relative) of the best are
   ties, and of those the simplest config wins: fewer instances, then a shorter queue delay,
   then a smaller max batch size, then the grid's order;
4. when no row is left by rule 2 (every candidate's p95 is worse, or the baseline itself
   failed), the highest-throughput usable row wins (ties as in 3); when no row has numbers at all, there is no choice (None).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from ..api.types import DynamicBatching, Serving

DEFAULT_MAX_BATCH_SIZES: Final = (8, 32)
DEFAULT_QUEUE_DELAYS_US: Final = (100, 500, 2000)
DEFAULT_INSTANCE_COUNTS: Final = (1, 2)
DEFAULT_LIMIT: Final = 16
DEFAULT_CONCURRENCY: Final = 16
DEFAULT_TIE: Final = 0.03


@dataclass(frozen=True, order=True)
class TritonKnobs:
    """One point of the sweep: what differs between the configs it measures."""

    max_batch_size: int
    max_queue_delay_us: int
    instance_count: int
    intra_op_threads: int
    dynamic_batching: bool = True

    @property
    def name(self) -> str:
        if not self.dynamic_batching:
            return f"batch{self.max_batch_size}-i{self.instance_count}-t{self.intra_op_threads}"
        return f"b{self.max_batch_size}-d{self.max_queue_delay_us}us-i{self.instance_count}-t{self.intra_op_threads}"

    @property
    def is_baseline(self) -> bool:
        return not self.dynamic_batching and self.max_batch_size <= 1

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "maxBatchSize": self.max_batch_size,
            "dynamicBatching": self.dynamic_batching,
            "maxQueueDelayMicroseconds": self.max_queue_delay_us,
            "instanceCount": self.instance_count,
            "intraOpThreads": self.intra_op_threads,
        }


def threads_for(cores: int, instances: int) -> int:
    """ONNX Runtime intra-op threads per instance: the cores shared out, at least one."""
    return max(1, cores // max(1, instances))


def baseline(cores: int) -> TritonKnobs:
    """Batch 1, one instance, every core to it, no dynamic batching."""
    return TritonKnobs(max_batch_size=1, max_queue_delay_us=0, instance_count=1, intra_op_threads=max(1, cores), dynamic_batching=False)


def sweep_grid(
    cores: int,
    *,
    max_batch_sizes: Iterable[int] = DEFAULT_MAX_BATCH_SIZES,
    queue_delays_us: Iterable[int] = DEFAULT_QUEUE_DELAYS_US,
    instance_counts: Iterable[int] = DEFAULT_INSTANCE_COUNTS,
    limit: int = DEFAULT_LIMIT,
    min_max_batch: int = 1,
) -> list[TritonKnobs]:
    """The configs a sweep measures, baseline first (see the module docstring). Candidates' max
    batch sizes are raised to `min_max_batch` (the spec's: clients may send batches that large)."""
    if cores < 1:
        raise ValueError(f"cores must be >= 1, got {cores}")
    if limit < 2:
        raise ValueError(f"limit must leave room for the baseline and one candidate, got {limit}")
    rows = [baseline(cores)]
    instances = sorted({i for i in instance_counts if 1 <= i <= cores}) or [1]
    for inst in instances:
        for mbs in sorted({max(b, min_max_batch) for b in max_batch_sizes if b > 1}):
            for delay in sorted({d for d in queue_delays_us if d >= 0}):
                rows.append(TritonKnobs(mbs, delay, inst, threads_for(cores, inst)))
    return rows[:limit]


@dataclass(frozen=True)
class SweepRow:
    """One measured row of the sweep's table."""

    knobs: TritonKnobs
    throughput: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    errors: int = 0
    requests: int = 0

    def usable(self) -> bool:
        nums = (self.throughput, self.p50_ms, self.p95_ms, self.p99_ms)
        return self.errors == 0 and self.requests > 0 and all(math.isfinite(x) for x in nums)

    def as_dict(self) -> dict[str, Any]:
        return {
            **self.knobs.as_dict(),
            "throughput": round(self.throughput, 2),
            "p50Ms": round(self.p50_ms, 3),
            "p95Ms": round(self.p95_ms, 3),
            "p99Ms": round(self.p99_ms, 3),
            "errors": self.errors,
            "requests": self.requests,
        }


def _simplicity(row: SweepRow, order: int) -> tuple[int, int, int, int]:
    k = row.knobs
    return (k.instance_count, k.max_queue_delay_us, k.max_batch_size, order)


def choose(
    table: Sequence[SweepRow], *, p95_slack: float = 1.0, tie: float = DEFAULT_TIE, min_max_batch: int = 1
) -> SweepRow | None:
    """The row to serve (see the module docstring for the rules). Rows whose max batch size is
    below `min_max_batch` (the spec's) are measured references only: they would refuse the
    batches clients may send."""
    if p95_slack <= 0 or tie < 0:
        raise ValueError("p95_slack must be > 0 and tie >= 0")
    usable = [(i, r) for i, r in enumerate(table) if r.usable() and r.knobs.max_batch_size >= min_max_batch]
    if not usable:
        return None
    base = next((r for r in table if r.knobs.is_baseline), table[0] if table else None)
    if base is not None and base.usable():
        bound = base.p95_ms * p95_slack
        eligible = [(i, r) for i, r in usable if r.p95_ms <= bound] or usable
    else:
        eligible = usable
    best = max(r.throughput for _, r in eligible)
    ties = [(i, r) for i, r in eligible if r.throughput >= best * (1 - tie)]
    return min(ties, key=lambda ir: _simplicity(ir[1], ir[0]))[1]


def apply_knobs(serving: Serving, knobs: TritonKnobs) -> Serving:
    """`serving` with the sweep's knobs set (the rest, e.g. preferred batch sizes no larger than
    the new max batch size, kept)."""
    db = serving.dynamic_batching
    preferred = [b for b in db.preferred_batch_sizes if b <= knobs.max_batch_size]
    return serving.model_copy(
        update={
            "max_batch_size": knobs.max_batch_size,
            "instance_count": knobs.instance_count,
            "intra_op_threads": knobs.intra_op_threads,
            "dynamic_batching": DynamicBatching(
                enabled=knobs.dynamic_batching,
                preferred_batch_sizes=preferred,
                max_queue_delay_microseconds=knobs.max_queue_delay_us,
            ),
        }
    )


def table_from_dicts(rows: Iterable[Mapping[str, Any]]) -> list[SweepRow]:
    """The inverse of `SweepRow.as_dict` (a table read back from a Job's output or status)."""
    out = []
    for r in rows:
        knobs = TritonKnobs(
            max_batch_size=int(r["maxBatchSize"]),
            max_queue_delay_us=int(r["maxQueueDelayMicroseconds"]),
            instance_count=int(r["instanceCount"]),
            intra_op_threads=int(r["intraOpThreads"]),
            dynamic_batching=bool(r["dynamicBatching"]),
        )
        out.append(
            SweepRow(
                knobs,
                float(r["throughput"]),
                float(r["p50Ms"]),
                float(r["p95Ms"]),
                float(r["p99Ms"]),
                int(r.get("errors", 0)),
                int(r.get("requests", 0)),
            )
        )
    return out

"""The scaling metrics and the serving health of the whole fleet, read once per poll and shared
by every ModelDeployment.

The scaler's pass over the fleet (controller/scaler.py) asks `FleetMetrics.sample` for the values
of each ModelDeployment whose poll is due. The first caller
after the last sample went stale sends one query per metric kind in use (grouped by namespace
and MD, scaling/promql.fleet_scaling_query) while the others wait on the same lock and then read
its answer: the number of Prometheus queries per poll is the number of metric kinds and one more
(the pods each value was taken over), whatever the number of ModelDeployments. A failed poll is
shared the same way, so a down Prometheus is asked once per poll, not once per object.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TypeVar

from ..api.types import ScalingMetricType
from . import promql
from .prometheus import AsyncPrometheus, Prometheus, PrometheusError

LABELS = ("namespace", "md")


@dataclass
class Sample:
    time: float
    kinds: frozenset[ScalingMetricType]
    values: dict[ScalingMetricType, dict[tuple[str, ...], float]] = field(default_factory=dict)
    error: PrometheusError | None = None
    pods: dict[tuple[str, ...], float] = field(default_factory=dict)

    def of(self, namespace: str, name: str, kinds: Iterable[ScalingMetricType]) -> dict[str, float | None]:
        """One ModelDeployment's values, by metric name; None where Prometheus had no data for it."""
        return {k.value: self.values.get(k, {}).get((namespace, name)) for k in kinds}

    def reporting(self, namespace: str, name: str) -> int | None:
        """How many of its pods the values were taken over; None where Prometheus had none."""
        n = self.pods.get((namespace, name))
        return None if n is None else int(n)


class FleetMetrics:
    def __init__(self, prom: AsyncPrometheus, window: str, clock: Callable[[], float] = time.time,
                 on_poll: Callable[[int, PrometheusError | None], None] | None = None) -> None:
        self.prom = prom
        self.window = window
        self.clock = clock
        self.on_poll = on_poll
        self.kinds: set[ScalingMetricType] = set()
        self.last: Sample | None = None
        self.queries = 0  # Prometheus queries sent so far (the operator exports it)
        self._lock: asyncio.Lock | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _the_lock(self) -> asyncio.Lock:
        loop = asyncio.get_running_loop()
        if self._lock is None or self._loop is not loop:
            self._lock, self._loop = asyncio.Lock(), loop
        return self._lock

    async def sample(self, kinds: Iterable[ScalingMetricType], max_age: float) -> Sample:
        """A sample no older than `max_age` seconds that holds every kind in `kinds`."""
        wanted = frozenset(kinds)
        self.kinds |= wanted
        async with self._the_lock():
            last = self.last
            if last is not None and self.clock() - last.time < max_age and wanted <= last.kinds:
                return last
            self.last = await self._poll(frozenset(self.kinds))
            return self.last

    async def _poll(self, kinds: frozenset[ScalingMetricType]) -> Sample:
        now = self.clock()
        ordered = sorted(kinds, key=lambda k: k.value)
        queries = [promql.fleet_reporting_pods(), *(promql.fleet_scaling_query(k, self.window) for k in ordered)]
        self.queries += len(queries)
        answers = await asyncio.gather(*(self.prom.query_by(q, LABELS) for q in queries), return_exceptions=True)
        sample = Sample(now, kinds)
        for kind, answer in zip([None, *ordered], answers, strict=True):
            if isinstance(answer, PrometheusError):
                sample.error = sample.error or answer
            elif isinstance(answer, BaseException):
                raise answer
            elif kind is None:
                sample.pods = answer
            else:
                sample.values[kind] = answer
        if self.on_poll is not None:
            self.on_poll(len(queries), sample.error)
        return sample


HEALTH = ("requestRate", "errorRatio", "p99LatencyMs")


@dataclass
class HealthSample:
    time: float
    values: dict[str, dict[tuple[str, ...], float]] = field(default_factory=dict)
    error: PrometheusError | None = None

    def of(self, namespace: str, name: str) -> dict[str, float | None]:
        return {k: self.values.get(k, {}).get((namespace, name)) for k in HEALTH}


@dataclass
class QualitySample:
    """The golden-set probe's readings of every ModelDeployment, by (namespace, name), then by
    artifact revision: {"time", "ok", "passed", "agreement", "cosine", "samples"} as far as present."""

    time: float
    values: dict[tuple[str, str], dict[str, dict[str, float]]] = field(default_factory=dict)
    error: PrometheusError | None = None

    def of(self, namespace: str, name: str) -> dict[str, dict[str, float]]:
        return self.values.get((namespace, name), {})


def quality_rows(answer: dict[tuple[str, ...], float]) -> dict[tuple[str, str], dict[str, dict[str, float]]]:
    """promql.fleet_golden_quality's answer, keyed by (metric, namespace, md, revision), regrouped."""
    out: dict[tuple[str, str], dict[str, dict[str, float]]] = {}
    for (metric, namespace, name, revision), value in answer.items():
        key = promql.GOLDEN_METRICS.get(metric)
        if key is not None:
            out.setdefault((namespace, name), {}).setdefault(revision, {})[key] = value
    return out


class FleetHealth:
    """Request rate, error ratio and p99 latency of every ModelDeployment: three queries per
    health interval for the whole fleet; and the golden-set quality of all of them, one more.
    The reconciler runs in worker threads, so this is the blocking client behind a thread lock:
    one thread queries. The others wait for its answer only when there is no earlier one; with
    an earlier sample they read that and go on. A loaded Prometheus answered in 5-12 s at 10,000
    objects, and every reconcile worker waiting on each refresh held the whole loop."""

    def __init__(self, prom: Prometheus, window: str, clock: Callable[[], float] = time.time,
                 on_poll: Callable[[int, PrometheusError | None], None] | None = None) -> None:
        self.prom = prom
        self.window = window
        self.clock = clock
        self.on_poll = on_poll
        self.last: HealthSample | None = None
        self.last_quality: QualitySample | None = None
        self._lock = threading.Lock()
        self._quality_lock = threading.Lock()

    def sample(self, max_age: float) -> HealthSample:
        return _fresh_or_polled(self._lock, lambda: self.last, self._poll_health, self.clock, max_age)

    def quality(self, max_age: float) -> QualitySample:
        return _fresh_or_polled(self._quality_lock, lambda: self.last_quality, self._poll_quality, self.clock, max_age)

    def _poll_health(self) -> HealthSample:
        sample = HealthSample(self.clock())
        queries = {"requestRate": promql.fleet_request_rate(self.window), "errorRatio": promql.fleet_error_ratio(self.window),
                   "p99LatencyMs": promql.fleet_p99_latency_ms()}
        sent = 0
        for key, query in queries.items():
            sent += 1
            try:
                sample.values[key] = self.prom.query_by(query, LABELS)
            except PrometheusError as exc:
                sample.error = exc
                break
        if self.on_poll is not None:
            self.on_poll(sent, sample.error)
        self.last = sample
        return sample

    def _poll_quality(self) -> QualitySample:
        sample = QualitySample(self.clock())
        try:
            sample.values = quality_rows(self.prom.query_by(promql.fleet_golden_quality(), promql.GOLDEN_BY))
        except PrometheusError as exc:
            sample.error = exc
        if self.on_poll is not None:
            self.on_poll(1, sample.error)
        self.last_quality = sample
        return sample


_S = TypeVar("_S", HealthSample, QualitySample)


def _fresh_or_polled(lock: threading.Lock, last: Callable[[], _S | None], poll: Callable[[], _S],
                     clock: Callable[[], float], max_age: float) -> _S:
    """The last sample while younger than `max_age`; else a new one from `poll`, sent by one
    thread at a time. A caller that finds another thread polling reads the stale sample rather
    than wait for the new one; only with no sample at all does it wait."""
    before = last()
    if before is not None and clock() - before.time < max_age:
        return before
    if not lock.acquire(blocking=before is None):
        assert before is not None
        return before
    try:
        current = last()  # another thread may have polled while this one waited for the lock
        if current is not None and clock() - current.time < max_age:
            return current
        return poll()
    finally:
        lock.release()

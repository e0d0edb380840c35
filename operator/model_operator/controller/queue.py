"""The reconcile loop's work queue: which ModelDeployment to reconcile next, and when.

The semantics of client-go's delaying work queue, which controllers built on it rely on:
- a key is in the queue at most once: a hundred events for one object while it waits are one
  reconcile;
- a key is never handed to two workers at once: a key added while a worker holds it waits until
  that worker is done, then runs again (so the last event is never lost);
- each key has a due time, the earliest any caller asked for: an event (due now) overtakes a
  scheduled resync (due in a minute).
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


class WorkQueue(Generic[K]):
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._cond = threading.Condition()
        self._due: dict[K, float] = {}
        self._heap: list[tuple[float, int, K]] = []
        self._seq = itertools.count()
        self._running: set[K] = set()
        self._after_run: dict[K, float] = {}
        self._closed = False

    def add(self, key: K, delay: float = 0.0) -> None:
        """Reconcile `key` in `delay` seconds, or sooner if already asked for sooner."""
        at = self._clock() + max(0.0, delay)
        with self._cond:
            if self._closed:
                return
            if key in self._running:
                self._after_run[key] = min(self._after_run.get(key, at), at)
                return
            self._push(key, at)

    def _push(self, key: K, at: float) -> None:
        if key in self._due and self._due[key] <= at:
            return
        self._due[key] = at
        # The old entry, if any, stays in the heap; `get` drops entries whose time is not the key's due time.
        heapq.heappush(self._heap, (at, next(self._seq), key))
        self._cond.notify()

    def get(self, timeout: float | None = None) -> K | None:
        """The next due key, now held by the caller until `done`; None when closed or after `timeout`."""
        deadline = None if timeout is None else self._clock() + timeout
        with self._cond:
            while not self._closed:
                now = self._clock()
                while self._heap:
                    at, _, key = self._heap[0]
                    if self._due.get(key) != at:
                        heapq.heappop(self._heap)
                        continue
                    if at > now:
                        break
                    heapq.heappop(self._heap)
                    del self._due[key]
                    self._running.add(key)
                    return key
                wait = self._heap[0][0] - now if self._heap else None
                if deadline is not None:
                    if now >= deadline:
                        return None
                    wait = deadline - now if wait is None else min(wait, deadline - now)
                self._cond.wait(wait)
            return None

    def done(self, key: K) -> None:
        """The worker is finished with `key`; what was asked for it meanwhile is queued now."""
        with self._cond:
            self._running.discard(key)
            at = self._after_run.pop(key, None)
            if at is not None and not self._closed:
                self._push(key, at)

    def forget(self, key: K) -> None:
        """Drop what is scheduled for `key` (the object is gone). A worker holding it finishes."""
        with self._cond:
            self._due.pop(key, None)
            self._after_run.pop(key, None)

    def due_in(self, key: K) -> float | None:
        """Seconds until `key` is due (negative: overdue), None when nothing is scheduled."""
        with self._cond:
            at = self._due.get(key, self._after_run.get(key))
            return None if at is None else at - self._clock()

    def __len__(self) -> int:
        with self._cond:
            return len(self._due)

    def ready(self) -> int:
        """Keys due now and not yet taken: the backlog."""
        now = self._clock()
        with self._cond:
            return sum(1 for at in self._due.values() if at <= now)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

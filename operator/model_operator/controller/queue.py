"""The reconcile loop's work queue: which ModelDeployment to reconcile next, and when.

The semantics of client-go's delaying work queue, which controllers built on it rely on:
- a key is in the queue at most once: a hundred events for one object while it waits are one
  reconcile;
- a key is never handed to two workers at once: a key added while a worker holds it waits until
  that worker is done, then runs again (so the last event is never lost);
- each key has a due time, the earliest any caller asked for: an event (due now) overtakes a
  scheduled resync (due in a minute).
And one of controller-runtime's priority queue: among the keys that are due, news (an ask due at
once: a watch event, a child's change) goes before revisits (a resync, a retry). A 10,000-object
cold start had 2,000 objects whose Deployments were Available wait behind 8,000 overdue resyncs
in due-time order. So that revisits are never starved (they re-sign URLs before they expire),
every REVISIT_EVERY-th key handed out is the oldest due revisit when one is waiting.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)

REVISIT_EVERY = 4


class WorkQueue(Generic[K]):
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._cond = threading.Condition()
        # key -> (due time, news): what is asked for it; a heap entry that differs is stale.
        self._due: dict[K, tuple[float, bool]] = {}
        self._heaps: dict[bool, list[tuple[float, int, K]]] = {True: [], False: []}
        self._seq = itertools.count()
        self._running: set[K] = set()
        self._after_run: dict[K, tuple[float, bool]] = {}
        self._handed = 0
        self._closed = False

    def add(self, key: K, delay: float = 0.0) -> None:
        """Reconcile `key` in `delay` seconds, or sooner if already asked for sooner. With no
        delay the ask is news and goes ahead of due revisits."""
        ask = (self._clock() + max(0.0, delay), delay <= 0)
        with self._cond:
            if self._closed:
                return
            if key in self._running:
                self._after_run[key] = _merge(self._after_run.get(key), ask)
                return
            self._push(key, ask)

    def _push(self, key: K, ask: tuple[float, bool]) -> None:
        held = self._due.get(key)
        merged = _merge(held, ask)
        if merged == held:
            return
        self._due[key] = merged
        # The old entry, if any, stays in its heap; `get` drops entries that are not the key's ask.
        heapq.heappush(self._heaps[merged[1]], (merged[0], next(self._seq), key))
        self._cond.notify()

    def _top(self, news: bool) -> tuple[float, K] | None:
        heap = self._heaps[news]
        while heap:
            at, _, key = heap[0]
            if self._due.get(key) == (at, news):
                return at, key
            heapq.heappop(heap)
        return None

    def get(self, timeout: float | None = None) -> K | None:
        """The next due key, now held by the caller until `done`; None when closed or after `timeout`."""
        deadline = None if timeout is None else self._clock() + timeout
        with self._cond:
            while not self._closed:
                now = self._clock()
                news, revisit = self._top(True), self._top(False)
                due = [t for t in (news, revisit) if t is not None and t[0] <= now]
                if due:
                    if len(due) == 2 and self._handed % REVISIT_EVERY == REVISIT_EVERY - 1:
                        due.reverse()  # the revisits' turn
                    key = due[0][1]
                    heapq.heappop(self._heaps[self._due.pop(key)[1]])
                    self._running.add(key)
                    self._handed += 1
                    return key
                tops = [t[0] for t in (news, revisit) if t is not None]
                wait = min(tops) - now if tops else None
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
            ask = self._after_run.pop(key, None)
            if ask is not None and not self._closed:
                self._push(key, ask)

    def forget(self, key: K) -> None:
        """Drop what is scheduled for `key` (the object is gone). A worker holding it finishes."""
        with self._cond:
            self._due.pop(key, None)
            self._after_run.pop(key, None)

    def due_in(self, key: K) -> float | None:
        """Seconds until `key` is due (negative: overdue), None when nothing is scheduled."""
        with self._cond:
            ask = self._due.get(key, self._after_run.get(key))
            return None if ask is None else ask[0] - self._clock()

    def __len__(self) -> int:
        with self._cond:
            return len(self._due)

    def ready(self) -> int:
        """Keys due now and not yet taken: the backlog."""
        now = self._clock()
        with self._cond:
            return sum(1 for at, _ in self._due.values() if at <= now)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()


def _merge(held: tuple[float, bool] | None, ask: tuple[float, bool]) -> tuple[float, bool]:
    """The earlier due time; news if either ask is (news is due at once, so never later)."""
    if held is None:
        return ask
    return min(held[0], ask[0]), held[1] or ask[1]

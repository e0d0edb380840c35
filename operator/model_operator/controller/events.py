"""Events posted off the reconcile threads.

An Event is one POST per reason per object. Posted from a reconcile worker, a cold start of
10,000 ModelDeployments kept every worker waiting on those POSTs (the benchmark's backlog stayed
near 10,000 while the API server was busy). The status holds the truth and an Event is a
courtesy, so, like client-go's event broadcaster, this queues a bounded number of them, posts
them on threads of its own, and drops (and counts) what does not fit rather than wait."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from . import metrics

log = logging.getLogger(__name__)

# (the object, type, reason, message) -> None; raises when the API server refused it.
Post = Callable[[dict[str, Any], str, str, str], None]


def reference(obj: Mapping[str, Any]) -> dict[str, Any]:
    """What an Event needs of its object (kube.api.event_for), not the whole body, which may wait
    in the queue a while."""
    meta = obj.get("metadata") or {}
    return {"apiVersion": obj.get("apiVersion"), "kind": obj.get("kind"),
            "metadata": {k: meta.get(k) for k in ("name", "namespace", "uid")}}


class EventPoster:
    def __init__(self, post: Post, threads: int = 2, capacity: int = 1000) -> None:
        self._post = post
        self._queue: queue.Queue[tuple[dict[str, Any], str, str, str] | None] = queue.Queue(capacity)
        self._threads = [threading.Thread(target=self._run, name=f"events-{i}", daemon=True) for i in range(threads)]
        self.dropped = 0

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def post(self, obj: Mapping[str, Any], type_: str, reason: str, message: str) -> bool:
        """Queue an Event; False (and counted) when the queue is full."""
        try:
            self._queue.put_nowait((reference(obj), type_, reason, message))
            return True
        except queue.Full:
            self.dropped += 1
            metrics.EVENTS_DROPPED.inc()
            meta = obj.get("metadata") or {}
            log.debug("%s/%s: Event %s dropped: %d waiting to be posted", meta.get("namespace"), meta.get("name"), reason,
                      self._queue.qsize())
            return False

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                obj, type_, reason, message = item
                try:
                    self._post(obj, type_, reason, message)
                except Exception as exc:  # noqa: BLE001 - an Event is a courtesy; the status holds the truth
                    meta = obj["metadata"]
                    log.warning("%s/%s: could not post Event %s: %s", meta["namespace"], meta["name"], reason, exc)
            finally:
                self._queue.task_done()

    def drain(self) -> None:
        """Wait until every queued Event was posted or refused (tests, shutdown)."""
        self._queue.join()

    def close(self, timeout: float = 5.0) -> None:
        """Post what is queued, for up to `timeout` seconds in all, then stop."""
        if not any(thread.is_alive() for thread in self._threads):
            return
        deadline = time.monotonic() + timeout
        for _ in self._threads:
            try:
                self._queue.put(None, timeout=max(0.0, deadline - time.monotonic()))
            except queue.Full:
                break
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

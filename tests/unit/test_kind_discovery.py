"""Optional kinds are discovered by one handler thread at a time, not by every thread at once."""

from __future__ import annotations

import threading
import time
from typing import Any

from model_operator.config import OperatorConfig
from model_operator.controller.reconcile import KIND_RECHECK_SECONDS, Reconciler

SCALED_OBJECT = ("keda.sh/v1alpha1", "ScaledObject")


class SlowDiscovery:
    def __init__(self, served: bool) -> None:
        self.served, self.calls = served, 0

    def has_kind(self, api_version: str, kind: str) -> bool:
        self.calls += 1
        time.sleep(0.05)  # a discovery round trip, long enough for the other threads to pile up
        return self.served


def ask_from_threads(reconciler: Reconciler, now: float, threads: int = 8) -> list[bool]:
    answers: list[bool] = []
    barrier = threading.Barrier(threads)

    def ask() -> None:
        barrier.wait()
        answers.append(reconciler.kind_served(SCALED_OBJECT, now))

    workers = [threading.Thread(target=ask) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=10)
    return answers


def test_a_stale_answer_is_refreshed_once_for_all_threads() -> None:
    kube: Any = SlowDiscovery(served=False)
    reconciler = Reconciler(kube, OperatorConfig())
    assert ask_from_threads(reconciler, now=1000.0) == [False] * 8
    assert kube.calls == 1
    # Within the recheck interval nobody asks; after it, one thread does, and sees the kind arrive.
    kube.served = True
    assert ask_from_threads(reconciler, now=1000.0 + KIND_RECHECK_SECONDS / 2) == [False] * 8
    assert kube.calls == 1
    assert ask_from_threads(reconciler, now=1000.0 + KIND_RECHECK_SECONDS) == [True] * 8
    assert kube.calls == 2

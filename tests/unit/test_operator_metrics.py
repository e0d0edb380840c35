"""The operator's phase tally: counts by namespace and phase, safe across kopf's handler threads."""

from __future__ import annotations

import threading

from prometheus_client import CollectorRegistry, Gauge

from model_operator.controller.metrics import PhaseTally


def _gauge() -> tuple[Gauge, CollectorRegistry]:
    registry = CollectorRegistry()
    return Gauge("mds", "by phase", ["namespace", "phase"], registry=registry), registry


def _counts(registry: CollectorRegistry) -> dict[tuple[str, str], float]:
    return {(s.labels["namespace"], s.labels["phase"]): s.value
            for m in registry.collect() for s in m.samples if s.value}


def test_a_phase_change_moves_one_object_between_counts() -> None:
    gauge, registry = _gauge()
    tally = PhaseTally(gauge)
    tally.set(("a", "m1"), "Optimizing")
    tally.set(("a", "m2"), "Optimizing")
    tally.set(("b", "m1"), "Ready")
    tally.set(("a", "m1"), "Ready")
    tally.set(("a", "m1"), "Ready")  # a repeat changes nothing
    assert _counts(registry) == {("a", "Optimizing"): 1, ("a", "Ready"): 1, ("b", "Ready"): 1}
    tally.forget(("a", "m2"))
    tally.forget(("a", "gone"))  # never seen: nothing to take away
    tally.set(("b", "m1"), None)  # a status without a phase counts nowhere
    assert _counts(registry) == {("a", "Ready"): 1}


def test_concurrent_reconciles_leave_exact_counts() -> None:
    """The dict the gauge used to be rebuilt from was iterated while other threads added to it
    ("dictionary changed size during iteration" failed reconciles at 300 objects)."""
    gauge, registry = _gauge()
    tally = PhaseTally(gauge)
    phases = ("Pending", "Optimizing", "Deploying", "Ready")

    def churn(worker: int) -> None:
        for i in range(2000):
            tally.set(("ns", f"m{worker}-{i % 50}"), phases[i % len(phases)])
        for i in range(50):
            tally.set(("ns", f"m{worker}-{i}"), "Ready" if i % 2 else "Failed")

    threads = [threading.Thread(target=churn, args=(w,)) for w in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert _counts(registry) == {("ns", "Ready"): 8 * 25, ("ns", "Failed"): 8 * 25}

"""The reconcile loop's and the scaler's gate: kopf's peering rule, applied to the peering
objects' status (e2e: test_two_replicas_elect_one_active_operator_and_hand_over)."""

from __future__ import annotations

import datetime
from typing import Any

from model_operator.controller.peering import PeeringGate, leads

NOW = datetime.datetime(2026, 12, 3, 12, 0, tzinfo=datetime.timezone.utc)


def seen(seconds_ago: float) -> str:
    return (NOW - datetime.timedelta(seconds=seconds_ago)).isoformat()


def test_the_highest_live_priority_leads() -> None:
    peers = {"a": {"priority": 10, "lastseen": seen(5), "lifetime": 60}, "b": {"priority": 20, "lastseen": seen(5), "lifetime": 60}}
    assert leads(peers, "b", 20, NOW)
    assert not leads(peers, "a", 10, NOW)
    # b stopped renewing: dead after its lifetime, and a leads.
    peers["b"]["lastseen"] = seen(61)
    assert leads(peers, "a", 10, NOW)


def test_the_same_priority_pauses_both_as_kopf_does() -> None:
    peers = {"a": {"priority": 10, "lastseen": seen(1)}, "b": {"priority": 10, "lastseen": seen(1)}}
    assert not leads(peers, "a", 10, NOW) and not leads(peers, "b", 10, NOW)


def test_alone_leads_even_before_its_own_entry_is_written() -> None:
    assert leads({}, "a", 1, NOW)
    assert leads({"a": {"priority": 1, "lastseen": seen(0)}}, "a", 1, NOW)


def test_the_gate_closes_when_a_higher_peer_joins_and_forgets_on_pause() -> None:
    statuses: list[Any] = [{"a": {"priority": 10, "lastseen": seen(0)}}]
    paused: list[bool] = []
    gate = PeeringGate(lambda: statuses, "a", 10, on_pause=lambda: paused.append(True))
    assert gate.check(NOW) and gate.active.is_set()
    statuses[0]["b"] = {"priority": 99, "lastseen": seen(0)}
    assert not gate.check(NOW) and not gate.active.is_set() and paused == [True]
    assert not gate.check(NOW) and paused == [True]  # once per pause
    del statuses[0]["b"]
    assert gate.check(NOW) and gate.active.is_set()


def test_a_missing_peering_object_closes_the_gate_as_kopf_pauses() -> None:
    gate = PeeringGate(lambda: [{"a": {"priority": 1}}, None], "a", 1)
    assert not gate.check(NOW)
    assert not PeeringGate(lambda: [], "a", 1).check(NOW)

"""Events posted off the reconcile threads (controller/events.py): a slow API server delays
Events, never a reconcile; a full queue drops and counts; a refused Event is logged, not raised."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from model_operator.controller.events import EventPoster, reference

OBJ = {"apiVersion": "serving.model-operator.io/v1alpha1", "kind": "ModelDeployment",
       "metadata": {"name": "a", "namespace": "ns", "uid": "u1", "resourceVersion": "7", "labels": {"x": "y"}},
       "spec": {"model": {"uri": "pvc://m/d.onnx"}}, "status": {"phase": "Ready"}}


def test_an_event_keeps_only_what_names_its_object() -> None:
    assert reference(OBJ) == {"apiVersion": OBJ["apiVersion"], "kind": "ModelDeployment",
                              "metadata": {"name": "a", "namespace": "ns", "uid": "u1"}}


def test_posting_waits_for_no_api_call_and_a_full_queue_drops_and_counts() -> None:
    gate, posted = threading.Event(), []

    def slow(obj: dict[str, Any], type_: str, reason: str, message: str) -> None:
        gate.wait(10)
        posted.append(reason)

    poster = EventPoster(slow, threads=1, capacity=2)
    poster.start()
    try:
        # The thread holds at most one Event and two more fit in the queue: of four, at least one
        # is dropped, and every post returned at once, while the API server is still "busy".
        results = [poster.post(OBJ, "Normal", f"R{i}", "m") for i in range(4)]
        assert results[:2] == [True, True] and results.count(False) >= 1 and poster.dropped == results.count(False)
        assert posted == []
        gate.set()
        poster.drain()
        assert posted == [f"R{i}" for i, ok in enumerate(results) if ok]
    finally:
        gate.set()
        poster.close()


def test_a_refused_event_is_logged_and_the_next_one_still_posted(caplog: pytest.LogCaptureFixture) -> None:
    posted = []

    def flaky(obj: dict[str, Any], type_: str, reason: str, message: str) -> None:
        if reason == "Bad":
            raise RuntimeError("(403) forbidden")
        posted.append(reason)

    poster = EventPoster(flaky, threads=1)
    poster.start()
    try:
        poster.post(OBJ, "Warning", "Bad", "m")
        poster.post(OBJ, "Normal", "Good", "m")
        poster.drain()
    finally:
        poster.close()
    assert posted == ["Good"]
    assert "could not post Event Bad" in caplog.text

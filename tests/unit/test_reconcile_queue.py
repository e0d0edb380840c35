"""The reconcile loop's work queue: one entry per key, one worker per key, the earliest due time
wins, and news goes before due revisits without starving them."""

from __future__ import annotations

import threading

from model_operator.controller.queue import REVISIT_EVERY, WorkQueue


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_key_added_many_times_is_handed_out_once() -> None:
    q: WorkQueue[str] = WorkQueue(Clock())
    for _ in range(100):
        q.add("a")
    q.add("b")
    assert len(q) == 2
    assert q.get(timeout=0) == "a"
    assert q.get(timeout=0) == "b"
    assert q.get(timeout=0) is None


def test_the_earliest_due_time_wins_and_later_ones_wait() -> None:
    clock = Clock()
    q: WorkQueue[str] = WorkQueue(clock)
    q.add("resync", delay=60)
    q.add("event")
    assert q.get(timeout=0) == "event"
    assert q.get(timeout=0) is None  # the resync is not due yet
    q.add("resync", delay=5)  # an event for it moves it earlier
    clock.now += 5
    assert q.get(timeout=0) == "resync"
    q.done("resync")
    q.add("resync", delay=60)
    q.add("resync", delay=120)  # a later ask does not push it back
    assert q.due_in("resync") == 60


def test_a_key_held_by_a_worker_is_not_handed_to_another_and_runs_again_after() -> None:
    clock = Clock()
    q: WorkQueue[str] = WorkQueue(clock)
    q.add("a")
    assert q.get(timeout=0) == "a"
    q.add("a")  # an event while a worker holds it
    assert q.get(timeout=0) is None
    q.add("a", delay=60)  # the worker's own resync ask: the event's earlier time wins
    q.done("a")
    assert q.get(timeout=0) == "a"


def test_news_goes_ahead_of_overdue_revisits_which_still_get_every_fourth_turn() -> None:
    clock = Clock()
    q: WorkQueue[str] = WorkQueue(clock)
    for i in range(10):
        q.add(f"resync-{i}", delay=60 + i)
    clock.now += 200  # all ten overdue, the oldest first
    for i in range(6):
        q.add(f"event-{i}")
    order = []
    while (key := q.get(timeout=0)) is not None:
        order.append(key)
    assert REVISIT_EVERY == 4
    assert order == ["event-0", "event-1", "event-2", "resync-0", "event-3", "event-4", "event-5", "resync-1",
                     *(f"resync-{i}" for i in range(2, 10))]


def test_an_event_for_a_key_waiting_as_a_revisit_makes_it_news() -> None:
    clock = Clock()
    q: WorkQueue[str] = WorkQueue(clock)
    q.add("a", delay=10)
    q.add("b", delay=20)
    clock.now += 100
    q.add("b")  # b's Deployment turned Available: no longer waits behind a's resync
    assert q.get(timeout=0) == "b"
    assert q.due_in("a") == -90
    assert q.get(timeout=0) == "a"
    q.add("a", delay=30)  # asked while a worker holds it: a revisit, not news
    q.add("c", delay=5)
    q.done("a")
    clock.now += 30
    assert [q.get(timeout=0), q.get(timeout=0)] == ["c", "a"]


def test_forget_drops_what_is_scheduled() -> None:
    q: WorkQueue[str] = WorkQueue(Clock())
    q.add("a", delay=10)
    q.forget("a")
    assert len(q) == 0 and q.due_in("a") is None


def test_ready_counts_only_what_is_due() -> None:
    clock = Clock()
    q: WorkQueue[str] = WorkQueue(clock)
    q.add("now")
    q.add("later", delay=30)
    assert q.ready() == 1
    clock.now += 30
    assert q.ready() == 2


def test_a_waiting_worker_wakes_for_a_new_key_and_for_close() -> None:
    q: WorkQueue[str] = WorkQueue()
    got: list[str | None] = []
    worker = threading.Thread(target=lambda: got.append(q.get(timeout=10)))
    worker.start()
    q.add("a")
    worker.join(10)
    assert got == ["a"]
    closer = threading.Thread(target=lambda: got.append(q.get()))
    closer.start()
    q.close()
    closer.join(10)
    assert got == ["a", None] and not closer.is_alive()


def test_many_workers_never_hold_one_key_at_once() -> None:
    q: WorkQueue[int] = WorkQueue()
    held: set[int] = set()
    lock = threading.Lock()
    clashes: list[int] = []
    runs = [0]

    def work() -> None:
        while (key := q.get(timeout=0.5)) is not None:
            with lock:
                if key in held:
                    clashes.append(key)
                held.add(key)
                runs[0] += 1
            with lock:
                held.discard(key)
            q.done(key)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for th in threads:
        th.start()
    for i in range(2000):
        q.add(i % 10)
    for th in threads:
        th.join(30)
    assert clashes == [] and 10 <= runs[0] <= 2000

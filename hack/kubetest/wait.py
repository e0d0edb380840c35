"""Polling with a deadline: the one way tests and the harness wait for something."""

from __future__ import annotations

import time
from typing import Callable, Literal, Optional, TypeVar

T = TypeVar("T")


class WaitTimeout(AssertionError):
    """The condition did not hold before the deadline.

    An AssertionError so that pytest reports it as a failed expectation, with
    the last value or exception seen, rather than as a crash.
    """


def wait_for(
    # Any falsy value means "not yet"; `check and value` predicates give False or the value.
    predicate: Callable[[], Optional[T] | Literal[False]],
    timeout: float = 30.0,
    interval: float = 0.5,
    message: str = "condition",
    ignore: tuple[type[BaseException], ...] = (),
) -> T:
    """Call ``predicate`` until it returns something truthy; return that value.

    ``timeout`` is a hard deadline in seconds; ``interval`` the pause between
    calls. Exceptions listed in ``ignore`` count as "not yet" (an object that
    does not exist yet raises 404, for instance); the last one is reported if
    the deadline passes. ``message`` says what was awaited, for the error.
    """
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            value = predicate()
        except ignore as exc:  # type: ignore[misc]
            value, last = None, exc
        else:
            if value:
                return value
            last = value
        if time.monotonic() >= deadline:
            raise WaitTimeout(f"timed out after {timeout:.0f}s waiting for {message}; last: {last!r}")
        time.sleep(min(interval, max(0.0, deadline - time.monotonic())))

"""Bounded waits on conditions: how tests wait for real processes (never a sleep as an assertion).

The one wait helper of the suite: a test that waits for something loops here, not in a
``while time.monotonic() < deadline`` of its own.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

__all__ = ["until"]

T = TypeVar("T")


def until(
    predicate: Callable[[], T],
    what: str | Callable[[], str],
    guard_s: float,
    poll_s: float = 0.05,
    *,
    tolerate: tuple[type[Exception], ...] = (),
) -> T:
    """Return ``predicate()``'s value once it is truthy; fail naming ``what`` after ``guard_s`` (a hang
    guard, not a timing check). ``what`` may be a callable, called on failure (a log's tail, the
    state seen last).

    ``tolerate``: exceptions that count as "not yet" (e.g. ``redis.RedisError`` while Redis restarts).
    """
    deadline = time.monotonic() + guard_s
    while True:
        try:
            value = predicate()
        except tolerate:
            value = None  # type: ignore[assignment]
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what() if callable(what) else what}")
        time.sleep(poll_s)

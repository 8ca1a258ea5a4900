"""Bounded waits on conditions: how tests wait for real processes (never a sleep as an assertion)."""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["until"]


def until(
    predicate: Callable[[], bool],
    what: str,
    guard_s: float,
    poll_s: float = 0.05,
    *,
    tolerate: tuple[type[Exception], ...] = (),
) -> None:
    """Return once ``predicate()`` holds; fail naming ``what`` after ``guard_s`` (a hang guard, not a timing check).

    ``tolerate``: exceptions that count as "not yet" (e.g. ``redis.RedisError`` while Redis restarts).
    """
    deadline = time.monotonic() + guard_s
    while not _holds(predicate, tolerate):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(poll_s)


def _holds(predicate: Callable[[], bool], tolerate: tuple[type[Exception], ...]) -> bool:
    try:
        return predicate()
    except tolerate:
        return False

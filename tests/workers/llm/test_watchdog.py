"""The TTFT watchdog: fires what is due, cancels what is not, and keeps nothing it no longer needs."""

from __future__ import annotations

import gc
import threading
import time
import weakref

from tests.support.waits import until
from workers.llm.watchdog import Watchdog


class _Stream:
    """Stands in for a response the callback would close."""

    def expire(self) -> None:  # pragma: no cover - never due in these tests
        raise AssertionError("cancelled deadline fired")


def test_a_due_deadline_fires_and_a_cancelled_one_does_not() -> None:
    dog = Watchdog()
    fired = threading.Event()
    try:
        soon = dog.schedule(0.05, fired.set)
        later = dog.schedule(0.05, _Stream().expire)
        assert dog.cancel(later)
        assert fired.wait(2)
        assert not dog.cancel(soon)  # it ran: the caller must treat the deadline as expired
        time.sleep(0.1)
    finally:
        dog.stop()


def test_cancelled_deadlines_let_go_of_their_callbacks() -> None:
    """A limit of seconds, thousands of calls a second: the timer must not keep every response."""
    dog = Watchdog()
    try:
        refs = []
        for _ in range(5000):
            stream = _Stream()
            refs.append(weakref.ref(stream))
            assert dog.cancel(dog.schedule(30.0, stream.expire))
            del stream

        # none is kept but, at most, one: a thread's frame may still hold the one it touched last
        # (seen in CI under load: 1 of 5,000 alive for 10 s); keeping every response is the bug
        def alive() -> int:
            gc.collect()
            return sum(1 for r in refs if r() is not None)

        until(lambda: alive() <= 1, "every stream but at most one let go", 10)
        assert dog.pending == 0
        # pending deadlines survive all that and still fire
        fired = threading.Event()
        dog.schedule(0.05, fired.set)
        for _ in range(2000):
            dog.cancel(dog.schedule(30.0, _Stream().expire))
        assert fired.wait(2)
    finally:
        dog.stop()


def test_the_timer_parks_when_idle_and_wakes_for_the_next_deadline() -> None:
    dog = Watchdog(tick_s=0.01, linger_s=0.05)
    try:
        first = threading.Event()
        dog.schedule(0.0, first.set)
        assert first.wait(2)
        until(lambda: dog._parked, "the idle timer to park (nothing pending for longer than linger_s)", 30)
        second = threading.Event()
        dog.schedule(0.02, second.set)
        assert second.wait(2)
    finally:
        dog.stop()

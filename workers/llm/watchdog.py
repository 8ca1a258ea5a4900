"""One timer thread per process that fires callbacks at deadlines (time-to-first-token limits).

Every streamed job arms a deadline and almost every one is cancelled a few milliseconds later,
when its first token arrives; so arming and cancelling must cost next to nothing, under threads
and under gevent alike. Here they take no lock at all: a deadline is one entry in a dict (a
single, atomic dict operation under the GIL), and the timer thread (a greenlet under gevent's
monkey-patching) ticks every ``tick_s`` while deadlines are pending, firing those that are due.
A deadline therefore fires up to ``tick_s`` (50 ms) late, which is noise next to a limit of
seconds. After ``linger_s`` without deadlines the thread parks until the next one is armed.

Whoever removes an entry from the dict owns it: :meth:`Watchdog.cancel` says whether the caller
won the race against the callback; ``False`` means the callback ran or is running, and the
caller must treat the deadline as expired. A cancelled deadline drops its callback at once, so a
finished response is never kept alive by its timer.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable

__all__ = ["Deadline", "Watchdog", "shared_watchdog"]

log = logging.getLogger("llmq.watchdog")

_PENDING, _FIRED, _CANCELLED = 0, 1, 2


class Deadline:
    """A scheduled callback; hand it back to :meth:`Watchdog.cancel`."""

    __slots__ = ("at", "callback", "key", "state")

    def __init__(self, at: float, callback: Callable[[], None], key: int) -> None:
        self.at = at
        self.callback: Callable[[], None] | None = callback
        self.key = key
        self.state = _PENDING


class Watchdog:
    def __init__(
        self, *, clock: Callable[[], float] = time.monotonic, tick_s: float = 0.05, linger_s: float = 2.0
    ) -> None:
        self._clock = clock
        self.tick_s = tick_s
        self.linger_s = linger_s
        self._pending: dict[int, Deadline] = {}
        self._keys = itertools.count()
        self._wake = threading.Event()
        self._parked = True
        self._stopped = False
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()

    def schedule(self, delay_s: float, callback: Callable[[], None]) -> Deadline:
        """Run ``callback`` (on the watchdog thread) within ``tick_s`` after ``delay_s`` unless cancelled first."""
        deadline = Deadline(self._clock() + delay_s, callback, next(self._keys))
        self._pending[deadline.key] = deadline
        if self._parked:  # read after the insert: a thread about to park re-checks the dict
            self._unpark()
        return deadline

    def cancel(self, deadline: Deadline) -> bool:
        """True when the callback will not run; False when it ran or is running."""
        if self._pending.pop(deadline.key, None) is not None:
            deadline.state = _CANCELLED
            deadline.callback = None
            return True
        return deadline.state == _CANCELLED

    @property
    def pending(self) -> int:
        """Deadlines armed and neither fired nor cancelled."""
        return len(self._pending)

    def _unpark(self) -> None:
        if self._thread is None:
            with self._start_lock:
                if self._thread is None:
                    self._stopped = False
                    self._parked = False
                    self._thread = threading.Thread(target=self._run, name="llmq-watchdog", daemon=True)
                    self._thread.start()
                    return
        self._parked = False
        self._wake.set()

    def _run(self) -> None:
        pending = self._pending
        idle_since: float | None = None
        while not self._stopped:
            if not pending:
                now = self._clock()
                idle_since = now if idle_since is None else idle_since
                if now - idle_since >= self.linger_s:
                    self._parked = True
                    self._wake.clear()
                    if not pending and not self._stopped:  # schedule() inserts before it reads _parked
                        self._wake.wait()
                    self._parked = False
                    idle_since = None
                    continue
            else:
                idle_since = None
                self._fire_due()
            time.sleep(self.tick_s)

    def _fire_due(self) -> None:
        now = self._clock()
        pending = self._pending
        # Snapshot the keys, not the entries: ``tuple(dict)`` of int keys allocates once, so no
        # garbage collection (whose finalizers may switch threads) runs in the middle of it and
        # the copy is atomic under the GIL; and the tick thread never holds a batch of entries
        # (each with its callback, and through it a response) while other threads cancel them.
        for key in tuple(pending):
            deadline = pending.get(key)
            if deadline is None or deadline.at > now or pending.pop(key, None) is None:
                continue
            deadline.state = _FIRED
            callback, deadline.callback = deadline.callback, None
            try:
                if callback is not None:
                    callback()
            except Exception:  # a failing callback must not stop every other deadline
                log.exception("watchdog callback failed")
            finally:
                # drop the fired entry and callback now, not when the next tick rebinds them
                del deadline, callback

    def stop(self) -> None:
        self._stopped = True
        self._pending.clear()
        self._wake.set()
        with self._start_lock:
            thread, self._thread = self._thread, None
        self._parked = True
        if thread is not None and thread is not threading.current_thread():
            thread.join(2)


_shared: Watchdog | None = None
_shared_lock = threading.Lock()


def shared_watchdog() -> Watchdog:
    """The process's watchdog, created on first use (never at import)."""
    global _shared
    if _shared is None:
        with _shared_lock:
            if _shared is None:
                _shared = Watchdog()
    return _shared

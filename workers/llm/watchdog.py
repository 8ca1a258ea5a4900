"""One timer thread per process that fires callbacks at deadlines (time-to-first-token limits).

A ``threading.Timer`` per stream would start an OS thread per request; this keeps one heap and
one thread (a greenlet under gevent's monkey-patching), so arming and disarming a deadline costs
a lock and a heap push. :meth:`Watchdog.cancel` tells the caller whether it won the race against
the callback: ``False`` means the callback ran or is running, and the caller must treat the
deadline as expired.
"""

from __future__ import annotations

import heapq
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

    __slots__ = ("at", "callback", "state")

    def __init__(self, at: float, callback: Callable[[], None]) -> None:
        self.at = at
        self.callback: Callable[[], None] | None = callback
        self.state = _PENDING


class Watchdog:
    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._heap: list[tuple[float, int, Deadline]] = []
        self._seq = itertools.count()
        self._cond = threading.Condition(threading.Lock())
        self._thread: threading.Thread | None = None
        self._stopped = False
        #: Cancelled deadlines still in the heap (most are: a first token usually arrives in time).
        self._cancelled = 0

    def schedule(self, delay_s: float, callback: Callable[[], None]) -> Deadline:
        """Run ``callback`` (on the watchdog thread) after ``delay_s`` unless cancelled first."""
        deadline = Deadline(self._clock() + delay_s, callback)
        with self._cond:
            if self._thread is None:
                self._start()
            heapq.heappush(self._heap, (deadline.at, next(self._seq), deadline))
            if self._heap[0][2] is deadline:
                self._cond.notify()
        return deadline

    def cancel(self, deadline: Deadline) -> bool:
        """True when the callback will not run; False when it ran or is running.

        The callback is dropped at once (it usually holds a whole response), and cancelled
        entries are swept out of the heap once they are most of it: a heap of limits that are
        seconds long would otherwise hold every call of the last few seconds.
        """
        with self._cond:
            if deadline.state == _PENDING:
                deadline.state = _CANCELLED
                deadline.callback = None
                self._cancelled += 1
                heap = self._heap
                if self._cancelled > 256 and self._cancelled * 2 > len(heap):
                    heap[:] = [entry for entry in heap if entry[2].state == _PENDING]
                    heapq.heapify(heap)
                    self._cancelled = 0
                return True
            return deadline.state == _CANCELLED

    def _start(self) -> None:
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="llmq-watchdog", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        cond = self._cond
        while True:
            with cond:
                due = self._pop_due()
                if due is None:
                    if self._stopped:
                        return
                    timeout = self._heap[0][0] - self._clock() if self._heap else None
                    cond.wait(timeout)
                    continue
            callback, due.callback = due.callback, None
            try:
                if callback is not None:
                    callback()
            except Exception:  # a failing callback must not stop every other deadline
                log.exception("watchdog callback failed")

    def _pop_due(self) -> Deadline | None:
        """The next due, still pending deadline (marked fired), dropping cancelled ones. Locked."""
        heap = self._heap
        now = self._clock()
        while heap:
            at, _, deadline = heap[0]
            if deadline.state == _CANCELLED:
                heapq.heappop(heap)
                self._cancelled = max(self._cancelled - 1, 0)
                continue
            if at > now:
                return None
            heapq.heappop(heap)
            deadline.state = _FIRED
            return deadline
        return None

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._heap.clear()
            self._cancelled = 0
            self._cond.notify()
            thread, self._thread = self._thread, None
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

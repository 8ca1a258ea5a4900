"""Aborting a call in flight from elsewhere (a cancelled job), for calls that are not streams.

A streamed call is aborted by closing its stream. A whole-body call (``stream: false`` jobs) has
no object the canceller can reach, so the job hands an :class:`AbortSignal` down with its request;
the HTTP layer *arms* it with the closer of the response it is reading and disarms it when done.
:meth:`AbortSignal.fire` (the cancel watcher's thread or greenlet) closes that response, which
ends the blocked read at once, and the HTTP layer reports :class:`JobCancelledError` instead of a
(retryable) read error. A signal that fired stays fired: a retry or a fallback that tries to send
afterwards is refused the same way, so a cancelled job never starts another request.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

__all__ = ["AbortSignal"]


class AbortSignal:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._close: Callable[[], None] | None = None
        self.fired = False

    def arm(self, close: Callable[[], None]) -> bool:
        """Register the closer of the response being read; False (and closed) when already fired."""
        with self._lock:
            if not self.fired:
                self._close = close
                return True
        close()
        return False

    def disarm(self) -> None:
        with self._lock:
            self._close = None

    def fire(self) -> None:
        """Abort now and from now on (idempotent)."""
        with self._lock:
            self.fired = True
            close, self._close = self._close, None
        if close is not None:
            close()

"""The ordering rules of one job's event feed, shared by the sync and async clients (no I/O).

A consumer reads two sources: the job's replay Stream (``XRANGE``: complete and in order) and
live pub/sub messages (which a slow or reconnecting subscriber can miss, and which repeat what a
replay already gave). :class:`EventCursor` keeps the last seq handed on and decides, for each
item, whether it goes to the consumer, is a repeat, or shows a gap (read the Stream again); it
hides deltas from consumers that do not want them (without parsing them) and says when the
terminal event was seen (or, for a consumer starting past it, that the job ended before its seq)
and how long the next live wait may be.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from typing import Final

from workers.contract import TERMINAL_EVENT_TYPES, StreamEvent, parse_event

__all__ = ["GAP", "EventCursor", "JobLostError", "ResultTimeoutError"]


class ResultTimeoutError(TimeoutError):
    """No terminal event (or result) within the consumer's timeout."""


class JobLostError(ResultTimeoutError):
    """The job's records (its metadata, events and result) vanished from Redis while it was followed:
    Redis lost its data (restarted without persistence, or flushed). No terminal event will come. A
    :class:`ResultTimeoutError`, so code that handles "no result" handles this too."""


class _Gap(enum.Enum):
    GAP = "gap"  # the only value (an enum member, so ``x is GAP`` narrows a type)

    def __repr__(self) -> str:
        return "GAP"


#: :meth:`EventCursor.live` found a seq beyond the next one: events were missed.
GAP: Final = _Gap.GAP


class EventCursor:
    def __init__(
        self,
        job_id: str,
        *,
        from_seq: int = 0,
        deltas: bool = True,
        timeout: float | None = None,
        idle_check_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.job_id = job_id
        self.from_seq = from_seq
        self.last = from_seq - 1
        self.deltas = deltas
        self.done = False
        self.idle_check_s = idle_check_s
        self.timeout = timeout
        self._clock = clock
        self._deadline = None if timeout is None else clock() + timeout
        self._started = clock()
        self._worker_checked = False
        #: The job was seen in Redis (an event, or its records) during this follow.
        self.seen = False

    @property
    def next_seq(self) -> int:
        return self.last + 1

    def replayed(self, event: StreamEvent) -> StreamEvent | None:
        """An event read from the Stream (in order, from :attr:`next_seq`): what to hand on."""
        self.seen = True
        self.last = event.seq
        self.done = event.type in TERMINAL_EVENT_TYPES
        return event if self.deltas or event.type != "delta" else None

    def live(self, raw: bytes | str) -> StreamEvent | _Gap | None:
        """A pub/sub message: the event to hand on, ``None`` (a repeat or a hidden delta), or :data:`GAP`."""
        if not self.deltas and isinstance(raw, bytes) and b'"type":"delta"' in raw[:24]:
            seq = _seq_of_delta(raw)
            if seq is not None:
                return self._advance(seq, None)
        event = parse_event(raw)
        return self._advance(event.seq, event)

    @property
    def waiting_past_start(self) -> bool:
        """Nothing handed on yet to a consumer that started past seq 0 (the job may have ended before it)."""
        return self.from_seq > 0 and self.last == self.from_seq - 1

    def ended_before(self, last: StreamEvent | None) -> bool:
        """Whether the Stream's last event shows the job ended before :attr:`next_seq` (a consumer that
        asked for ``from_seq`` past the end): then nothing more will come, and :attr:`done` is set."""
        if last is not None and last.type in TERMINAL_EVENT_TYPES and last.seq < self.next_seq:
            self.done = True
        return self.done

    def still_there(self, exists: bool) -> None:
        """What an idle look found: whether any of the job's records is in Redis. Raises
        :class:`JobLostError` when the job, seen before, is gone (a job not seen yet may still be on
        its way: a consumer that follows an id before its producer submits it)."""
        if exists:
            self.seen = True
        elif self.seen:
            raise JobLostError(
                f"job {self.job_id} vanished from Redis while it was followed (its metadata, events and "
                "result are gone): Redis lost its data (restarted without persistence, or flushed), or the "
                "job outlived its records (queued longer than LLMQ_RESULT_TTL_S); no terminal event will "
                "come, submit it again"
            )

    def _advance(self, seq: int, event: StreamEvent | None) -> StreamEvent | _Gap | None:
        self.seen = True
        if seq <= self.last:
            if event is not None and event.type in TERMINAL_EVENT_TYPES:
                self.done = True  # the job ended before the seq this consumer started from
            return None
        if seq > self.last + 1:
            return GAP  # a missed event may be one the consumer wants: fill from the Stream
        self.last = seq
        if event is None:
            return None
        self.done = event.type in TERMINAL_EVENT_TYPES
        return event if self.deltas or event.type != "delta" else None

    def worker_check_due(self, after_s: float | None) -> bool:
        """True once, when nothing has come for ``after_s`` seconds since the wait began (time to look
        whether any worker consumes the job's queue); never when ``after_s`` is None."""
        if after_s is None or self._worker_checked or self.last != self.from_seq - 1:
            return False
        if self._clock() - self._started < after_s:
            return False
        self._worker_checked = True
        return True

    def wait_s(self) -> float:
        """How long the next live read may block (raises :class:`ResultTimeoutError` once the timeout passed)."""
        if self._deadline is None:
            return self.idle_check_s
        left = self._deadline - self._clock()
        if left <= 0:
            raise ResultTimeoutError(f"no terminal event for job {self.job_id} within {self.timeout}s")
        return min(self.idle_check_s, left)


def _seq_of_delta(raw: bytes) -> int | None:
    """The seq of a delta event without a full parse (None when it cannot be read)."""
    start = raw.find(b'"seq":')
    if start < 0:
        return None
    end = raw.find(b",", start)
    try:
        return int(raw[start + 6 : end])
    except ValueError:
        return None

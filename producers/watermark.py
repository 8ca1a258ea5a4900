"""The high watermark of Redis memory: producers refuse new jobs *before* Redis refuses writes.

Redis runs ``noeviction``: at ``maxmemory`` every write fails, a running job's events and result
included. So a submit is refused (:class:`~producers.errors.RedisFullError`) once Redis uses more
than ``LLMQ_REDIS_HIGH_WATERMARK`` (90 %) of its ``maxmemory``; the room above is for the jobs
already queued and running. Reading ``INFO memory`` on every submit would add a round trip to each,
so a client keeps its last reading for ``LLMQ_REDIS_MEMORY_CHECK_S`` (1 s) and adds to it an
estimate of what its own submits stored since; it reads again at once when that estimate reaches
the watermark, so one fast producer cannot run past it between readings. What *other* producers
store in between is seen at the next reading: the room above the watermark absorbs it, and a write
Redis refuses anyway becomes the same error (:func:`is_out_of_memory`).

I/O-free: the sync and asyncio clients read ``INFO memory`` when :meth:`MemoryWatermark.due` says so.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import redis

from producers.errors import RedisFullError, in_cause_chain

__all__ = [
    "REDIS_FULL_RETRY_AFTER_S",
    "MemoryReading",
    "MemoryWatermark",
    "is_out_of_memory",
    "queued_bytes",
]

log = logging.getLogger("llmq.producer")

#: What a refused submit suggests as its ``retry_after_s``: memory frees as jobs end and results expire.
REDIS_FULL_RETRY_AFTER_S = 5.0
#: A reading counts as fresh this long: a refusal within it does not read again (a burst of refused
#: submits costs one ``INFO`` per interval, not one each).
FRESH_S = 0.05
#: Bytes Redis holds for one queued job, per byte of the job's JSON and fixed (kombu's base64 body
#: and envelope, the meta hash, jemalloc's size classes): measured by ``bench/redis_sizing_bench.py``.
QUEUED_BYTES_PER_JSON_BYTE = 1.65
QUEUED_BYTES_FIXED = 1500


def queued_bytes(json_bytes: int) -> int:
    """Estimated Redis memory of a queued job whose JSON is ``json_bytes`` long."""
    return int(json_bytes * QUEUED_BYTES_PER_JSON_BYTE) + QUEUED_BYTES_FIXED


#: What redis-py's errors say for a write refused at ``maxmemory`` (``OOM command not allowed when
#: used memory > 'maxmemory'``); kombu re-raises it as its own ``OperationalError`` with that text.
_OOM_TEXT = "> 'maxmemory'"


def is_out_of_memory(exc: BaseException) -> bool:
    """True when ``exc`` (or anything in its cause chain) is Redis refusing a write at ``maxmemory``."""
    return in_cause_chain(exc, lambda e: isinstance(e, redis.OutOfMemoryError) or _OOM_TEXT in str(e))


@dataclass(frozen=True, slots=True)
class MemoryReading:
    #: ``used_memory`` minus what ``maxmemory`` does not count (replication and AOF buffers).
    used: int
    #: ``maxmemory``; 0 when Redis has none (nothing to watch).
    limit: int
    #: When it was read (the watermark's clock).
    at: float


def _mb(n: int) -> str:
    return f"{n / 1_048_576:.1f} MB"


class MemoryWatermark:
    """One Redis's memory as a client last read it, and the decision a submit takes from it.

    Not locked: two threads (or tasks) may both read Redis at an interval's end; that only costs a
    second ``INFO``.
    """

    def __init__(
        self,
        high: float,
        *,
        setting: str = "LLMQ_REDIS_URL",
        interval_s: float = 1.0,
        retry_after_s: float = REDIS_FULL_RETRY_AFTER_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        #: Fraction of ``maxmemory`` above which submits are refused; 0 turns the check off.
        self.high = high
        self.setting = setting
        self.interval_s = interval_s
        #: What a refusal suggests as its ``retry_after_s``.
        self.retry_after_s = retry_after_s
        self._clock = clock
        self.reading: MemoryReading | None = None
        #: Estimated bytes this client's submits stored since the reading.
        self.added = 0
        self._off = False
        self._reading_now = False

    @property
    def enabled(self) -> bool:
        return self.high > 0 and not self._off

    @property
    def sized(self) -> bool:
        """Whether a submit's size matters (Redis has a ``maxmemory``, or it was not read yet)."""
        return self.enabled and (self.reading is None or self.reading.limit > 0)

    def _over(self, job_bytes: int) -> bool:
        r = self.reading
        return r is not None and r.limit > 0 and r.used + self.added + job_bytes > self.high * r.limit

    def due(self, job_bytes: int = 0) -> bool:
        """Read ``INFO memory`` before this submit? At an interval's end, or when the estimate says
        this submit would cross the watermark (unless the reading is fresh: that refusal stands)."""
        if not self.enabled or self._reading_now:
            return False
        r = self.reading
        if r is None:
            return True
        age = self._clock() - r.at
        return age >= self.interval_s or (age >= FRESH_S and self._over(job_bytes))

    def begin(self) -> None:
        """A reading is under way (meanwhile other callers decide on the last one); :meth:`end` after."""
        self._reading_now = True

    def end(self) -> None:
        self._reading_now = False

    def record(self, info: Mapping[str, Any]) -> None:
        """Take a reply of ``INFO memory``."""
        used = int(info.get("used_memory", 0)) - int(info.get("mem_not_counted_for_evict", 0))
        self.reading = MemoryReading(used=max(used, 0), limit=int(info.get("maxmemory", 0)), at=self._clock())
        self.added = 0

    def failed(self, exc: Exception) -> None:
        """The reading failed. Redis being away is the registration's to ride out (the last reading
        stands); a Redis that refuses ``INFO`` (an ACL, a renamed command) turns the check off."""
        if isinstance(exc, redis.ResponseError) and not is_out_of_memory(exc):
            self._off = True
            log.warning(
                "Redis (%s) refused INFO memory (%s): submits are not checked against its maxmemory; "
                "grant the producer INFO, or a full Redis is noticed only when it refuses a write",
                self.setting,
                exc,
            )

    def admit(self, job_bytes: int) -> None:
        """Raise :class:`RedisFullError` when this submit would take Redis above the watermark;
        else count its bytes towards the next decision."""
        if not self.enabled:
            return
        if self._over(job_bytes):
            raise self.full_error()
        self.added += job_bytes

    def full_error(self, refused_by: str | None = None) -> RedisFullError:
        """The error for a full Redis, with the last reading's figures; ``refused_by``: the write that
        Redis refused, when it did."""
        r = self.reading
        if r is not None and r.limit > 0:
            figures = f"{_mb(r.used)} used of {_mb(r.limit)} maxmemory ({r.used / r.limit:.0%})"
        elif r is not None:
            figures = f"{_mb(r.used)} used, no maxmemory set"
        else:
            figures = "usage unknown"
        why = (
            f"refused a write ({refused_by})"
            if refused_by
            else f"is above the {self.high:.0%} high watermark (LLMQ_REDIS_HIGH_WATERMARK)"
        )
        message = (
            f"Redis ({self.setting}) is full: {figures}, it {why}; new jobs are refused so running ones "
            f"can finish. Retry in {self.retry_after_s:g}s, or give Redis more memory "
            "(CONFIG SET maxmemory, ops/redis.conf) or keep results shorter (LLMQ_RESULT_TTL_S)"
        )
        return RedisFullError(
            message,
            self.retry_after_s,
            r.used if r is not None else None,
            r.limit if r is not None else None,
            self.setting,
        )

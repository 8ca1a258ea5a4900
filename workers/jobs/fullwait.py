"""Waiting for a Redis that refuses writes at ``maxmemory`` to take them again.

A write Redis refuses is not a finished job (``workers/connections/oom.py`` recognises the refusal).
What a run does about one depends on what it already did:

* nothing paid yet (its claim, its start event or its first reservation refused): it waits here a
  short while (``LLMQ_REDIS_FULL_WAIT_S``), then gives its job back to the queue, holding no slot
  (the pipeline's ``left_for_restore``: the message is left unacknowledged and restored once Redis
  takes writes, as a crashed worker's would be);
* a call paid (a later reservation, the ending): it waits here for as long as Redis stays full,
  its result kept in memory, and ends the job exactly once when Redis takes the write; only the
  worker's shutdown stops the wait (the job is then redelivered and resumes as after a crash).

Whether Redis takes writes is asked with a tiny write of its own (``SET <probe> PX``), the kind of
write Redis refuses while full; reads and deletes would pass and prove nothing.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Callable

import redis
from prometheus_client import CollectorRegistry, Counter

from workers.connections.oom import refused_for_memory

__all__ = ["WriteWait"]

log = logging.getLogger("llmq.pipeline")

_FIRST_S = 0.25
_MAX_S = 2.0


class WriteWait:
    """Waits until ``client``'s Redis takes writes again (one per process)."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        registry: CollectorRegistry | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._client = client
        self._sleep = sleep
        self._probe = f"llmq:fullprobe:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.waits = Counter(
            "llmq_redis_full_waits",
            "Jobs that found Redis refusing writes at maxmemory, by what was refused and what they did.",
            ["stage", "outcome"],
            registry=registry or CollectorRegistry(),
        )

    def writable(self) -> bool:
        """True when Redis takes a small write now; False while it refuses writes (or is away)."""
        try:
            self._client.set(self._probe, b"1", px=2000)
        except redis.RedisError as exc:
            if refused_for_memory(exc) or isinstance(exc, redis.ConnectionError | redis.TimeoutError):
                return False
            raise
        return True

    def wait(self, stage: str, *, budget_s: float | None, stop: Callable[[], bool]) -> bool:
        """Wait until Redis takes writes (True), at most ``budget_s`` seconds (None: no limit) and
        while ``stop()`` is false (False when either ends the wait)."""
        waited = 0.0
        delay = _FIRST_S
        logged = False
        while True:
            if stop():
                self.waits.labels(stage, "stopped").inc()
                return False
            if self.writable():
                self.waits.labels(stage, "resumed").inc()
                return True
            if budget_s is not None and waited >= budget_s:
                self.waits.labels(stage, "gave_back").inc()
                return False
            if not logged:
                log.warning("Redis refuses writes (full at maxmemory): waiting for it to take the %s", stage)
                logged = True
            pause = delay if budget_s is None else max(0.0, min(delay, budget_s - waited))
            self._sleep(pause)
            waited += pause
            delay = min(delay * 2, _MAX_S)

"""Proof of life for running jobs: the worker process renews the claim lease of every job it runs.

A job's claim (``workers/jobs/store.py``) is a short lease, so a dead worker's job can run again
within seconds. Event flushes renew it too, but a job can go quiet for longer than the lease (a
slow first token, a retry wait, a whole-body call), so one thread per worker process renews every
running job's claim each ``interval`` seconds, in one round trip. A claim found held by another
run means this run was paused or cut off past its lease and the job moved: the run is told at
once (its ``on_lost`` hook aborts the upstream call) and every later write of it is refused by
the token checks anyway.

Redis errors are logged and retried on the next beat; a lease that lapses while Redis is away is
caught by the fencing checks when the run writes again.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

import redis

from workers.contract import JobKeys
from workers.jobs.store import JobStore

__all__ = ["ClaimHeartbeat"]

log = logging.getLogger("llmq.heartbeat")


@dataclass(frozen=True, slots=True)
class _Held:
    keys: JobKeys
    token: str
    on_lost: Callable[[], None]


class ClaimHeartbeat:
    """Renews the claims of the jobs running in this process every ``interval`` seconds."""

    def __init__(self, store: JobStore, *, interval: float) -> None:
        self._store = store
        self.interval = interval
        self._held: dict[str, _Held] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        #: Beats that reached Redis (for tests and metrics).
        self.beats = 0

    def hold(self, keys: JobKeys, token: str, on_lost: Callable[[], None]) -> None:
        with self._lock:
            self._held[token] = _Held(keys, token, on_lost)

    def drop(self, token: str) -> None:
        with self._lock:
            self._held.pop(token, None)

    def beat(self) -> list[str]:
        """Renew every held claim now; returns the tokens that had lost theirs (and drops them)."""
        with self._lock:
            held = list(self._held.values())
        if not held:
            return []
        renewed = self._store.renew_many([(h.keys, h.token) for h in held])
        self.beats += 1
        lost = [h for h, ok in zip(held, renewed, strict=True) if not ok]
        for h in lost:
            log.warning("job %s: this run no longer holds its claim; stopping it", h.keys.job_id)
            self.drop(h.token)
            try:
                h.on_lost()
            except Exception:  # a hook must never stop the heartbeat of the other jobs
                log.exception("job %s: abort hook failed", h.keys.job_id)
        return [h.token for h in lost]

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="llmq-claim-heartbeat", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.beat()
            except redis.RedisError as exc:
                log.warning("claim heartbeat: Redis unavailable (%s); retrying", exc)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(3)

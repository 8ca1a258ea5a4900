"""``WAIT replicas timeout_ms`` after the ledger's writes, and what it returned (see ``ledger.py``)."""

from __future__ import annotations

import logging
import threading

__all__ = ["ReplicaWait"]

log = logging.getLogger("llmq.ledger")


class ReplicaWait:
    """``WAIT replicas timeout_ms`` after every reservation and settlement, and what it returned.

    ``acked`` counts the writes at least ``replicas`` replicas acknowledged in time, ``short`` the
    ones fewer did (a replica down or lagging: logged, counted, not an error). Thread-safe.
    """

    def __init__(self, replicas: int, timeout_ms: int) -> None:
        if replicas < 1 or timeout_ms < 1:
            raise ValueError("WAIT needs at least one replica and a timeout of at least 1 ms (0 would block)")
        self.replicas = replicas
        self.timeout_ms = timeout_ms
        self.acked = 0
        self.short = 0
        self._lock = threading.Lock()

    def record(self, op: str, acknowledged: int, what: str) -> None:
        with self._lock:
            if acknowledged >= self.replicas:
                self.acked += 1
                return
            self.short += 1
        log.warning(
            "ledger %s of %s reached %d of %d replicas within %d ms; a fail-over now could lose it",
            op,
            what,
            acknowledged,
            self.replicas,
            self.timeout_ms,
        )

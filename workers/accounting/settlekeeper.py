"""Settlements Redis refused, kept until it takes them: a paid call is always accounted.

A provider call that was made is paid, whether or not Redis takes its settlement. When the ledger's
settle is refused (Redis at ``maxmemory``, or away for a moment), :class:`SettleKeeper` keeps it
(the reservation and the actual cost) and retries it in order, once a second, from a thread of its
own, until Redis takes it; the job meanwhile goes on to its ending (which waits for Redis too).
A settlement is idempotent per job call (its marker in the ledger), so one retried after it was
in fact applied (a reply lost with the connection) is a no-op, never a second charge.

Bounded: at most ``max_pending`` are kept; a job whose settlement finds the keeper full retries it
itself until Redis takes it (it waits, holding its slot, as the ending would). Counted:
``llmq_settles_refused_total``, ``llmq_settles_pending``, ``llmq_settles_journaled_total``.
Never dropped: when the worker stops (:meth:`SettleKeeper.close`) with settlements Redis still
refuses, they are appended to a journal file (JSON lines, ``LLMQ_SETTLE_JOURNAL``), which the next
worker started with the same journal settles first (:meth:`SettleKeeper.replay`).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from workers.accounting.money import Reservation

__all__ = ["PendingSettle", "SettleKeeper", "default_journal"]

log = logging.getLogger("llmq.ledger")

#: Retry pace while Redis refuses: the first retry after this, doubling to ``_MAX_BACKOFF_S``.
_BASE_BACKOFF_S = 0.5
_MAX_BACKOFF_S = 5.0


@dataclass(frozen=True, slots=True)
class PendingSettle:
    """One refused settlement: the call's reservation and what the call actually cost (micro-USD);
    or (``release``) a refused release of a reservation whose call was not made or failed before
    any output (it frees the held amount at once instead of when the lease expires)."""

    reservation: Reservation
    actual_micros: int
    release: bool = False

    def to_json(self) -> str:
        r = self.reservation
        return json.dumps(
            {
                "job_id": r.job_id,
                "attempt": r.attempt,
                "tenant": r.tenant,
                "month": r.month,
                "day": r.day,
                "amount_micros": r.amount_micros,
                "tags": list(r.tags),
                "user": r.user,
                "model": r.model,
                "actual_micros": self.actual_micros,
                "release": self.release,
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, line: str) -> PendingSettle:
        d: dict[str, Any] = json.loads(line)
        reservation = Reservation(
            str(d["job_id"]),
            int(d["attempt"]),
            str(d["tenant"]),
            str(d["month"]),
            int(d["amount_micros"]),
            tags=tuple(str(t) for t in d.get("tags", ())),
            user=d.get("user"),
            model=str(d.get("model", "")),
            day=str(d.get("day", "")),
        )
        return cls(reservation, int(d["actual_micros"]), bool(d.get("release", False)))


def default_journal() -> Path:
    """``$XDG_STATE_HOME/llmq/unsettled.jsonl`` (``~/.local/state`` without the variable)."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "llmq" / "unsettled.jsonl"


class _Metrics:
    def __init__(self, registry: CollectorRegistry | None) -> None:
        registry = registry or CollectorRegistry()
        self.refused = Counter(
            "llmq_settles_refused", "Settlements Redis refused (kept and retried).", registry=registry
        )
        self.pending = Gauge("llmq_settles_pending", "Refused settlements kept for a retry.", registry=registry)
        self.journaled = Counter(
            "llmq_settles_journaled", "Settlements written to the journal at shutdown.", registry=registry
        )


class SettleKeeper:
    """Keeps and retries refused settlements (``settle``: the ledger's settle that raises)."""

    def __init__(
        self,
        settle: Callable[[Reservation, int], object],
        *,
        release: Callable[[Reservation], object] | None = None,
        journal: Path | None = None,
        max_pending: int = 10_000,
        registry: CollectorRegistry | None = None,
        sleep: Callable[[float], None] = time.sleep,
        background: bool = True,
    ) -> None:
        self._settle = settle
        self._release = release
        #: Retry from a thread of its own (False: only :meth:`flush` and :meth:`close` retry).
        self.background = background
        self.journal = journal
        self.max_pending = max_pending
        self._sleep = sleep
        self._pending: list[PendingSettle] = []
        self._lock = threading.Lock()
        self._flushing = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.metrics = _Metrics(registry)

    @property
    def pending(self) -> list[PendingSettle]:
        with self._lock:
            return list(self._pending)

    def keep_release(self, reservation: Reservation, reason: BaseException) -> None:
        """Keep a release Redis refused, retried like a settlement (not counted as one)."""
        self.keep(reservation, 0, reason, release=True)

    def _apply(self, item: PendingSettle) -> None:
        if item.release:
            if self._release is not None:
                self._release(item.reservation)
        else:
            self._settle(item.reservation, item.actual_micros)

    def keep(
        self, reservation: Reservation, actual_micros: int, reason: BaseException, *, release: bool = False
    ) -> None:
        """Keep a settlement Redis refused (``reason``), to be retried until it is taken. When the
        keeper is full, retry it here until Redis takes it (the caller waits)."""
        if not release:
            self.metrics.refused.inc()
        item = PendingSettle(reservation, actual_micros, release)
        with self._lock:
            if len(self._pending) < self.max_pending:
                self._pending.append(item)
                self.metrics.pending.set(len(self._pending))
                kept = True
            else:
                kept = False
        if kept:
            log.warning(
                "%s of %s refused (%s: %s); kept, retried until Redis takes it",
                "release" if release else "settlement",
                reservation.id,
                type(reason).__name__,
                str(reason)[:200],
            )
            self._start()
            self._wake.set()
            return
        delay = _BASE_BACKOFF_S
        while True:  # full: this caller waits for its own settlement
            self._sleep(delay)
            try:
                self._apply(item)
                return
            except Exception:
                delay = min(delay * 2, _MAX_BACKOFF_S)

    def flush(self) -> int:
        """Retry the kept settlements in order, stopping at the first refusal; how many Redis took."""
        done = 0
        with self._flushing:
            while True:
                with self._lock:
                    if not self._pending:
                        break
                    item = self._pending[0]
                try:
                    self._apply(item)
                except Exception as exc:
                    log.debug("kept settlement of %s still refused: %s", item.reservation.id, exc)
                    break
                with self._lock:
                    self._pending.remove(item)
                    self.metrics.pending.set(len(self._pending))
                done += 1
        if done:
            log.info("settled %d kept settlement(s); %d still kept", done, len(self.pending))
        return done

    def _start(self) -> None:
        if self._thread is not None or not self.background:
            return
        with self._lock:
            if self._thread is None and not self._stop.is_set():
                self._thread = threading.Thread(target=self._loop, name="llmq-settle-keeper", daemon=True)
                self._thread.start()

    def _loop(self) -> None:
        delay = _BASE_BACKOFF_S
        while not self._stop.is_set():
            self._wake.wait(delay)
            self._wake.clear()
            if self._stop.is_set():
                return
            if not self.pending:
                delay = _BASE_BACKOFF_S
                continue
            delay = _BASE_BACKOFF_S if self.flush() and not self.pending else min(delay * 2, _MAX_BACKOFF_S)

    def close(self, timeout_s: float = 5.0) -> int:
        """Stop retrying: a last try for up to ``timeout_s``, then what Redis still refuses is
        appended to the journal (or, without a journal that can be written, logged one line each,
        enough to settle by hand). Returns how many were journaled."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(5)
        end = time.monotonic() + timeout_s
        while self.pending and time.monotonic() < end:
            if not self.flush():
                self._sleep(min(_BASE_BACKOFF_S, max(0.0, end - time.monotonic())))
        with self._lock:
            left, self._pending = self._pending, []
            self.metrics.pending.set(0)
        if not left:
            return 0
        lines = "".join(item.to_json() + "\n" for item in left)
        try:
            if self.journal is None:
                raise OSError("no settle journal configured")
            self.journal.parent.mkdir(parents=True, exist_ok=True)
            with open(self.journal, "a", encoding="utf-8") as out:
                out.write(lines)
                out.flush()
                os.fsync(out.fileno())
        except OSError as exc:
            for item in left:
                log.error("UNSETTLED (settle it by hand; %s): %s", exc, item.to_json())
            return 0
        self.metrics.journaled.inc(len(left))
        log.warning("%d settlement(s) Redis refused written to %s; settled at the next start", len(left), self.journal)
        return len(left)

    def replay(self) -> int:
        """Settle what a stopped worker journaled (the file is taken first, so two workers starting
        at once do not both read it; a settlement is idempotent anyway). What Redis refuses now is
        kept and retried as usual. Returns how many were read."""
        journal = self.journal
        if journal is None or not journal.exists():
            return 0
        taken = journal.with_name(f"{journal.name}.{os.getpid()}.{time.time_ns()}.replaying")
        try:
            journal.rename(taken)
        except OSError:
            return 0  # another worker took it
        items: list[PendingSettle] = []
        for line in taken.read_text(encoding="utf-8").splitlines():
            if line.strip():
                try:
                    items.append(PendingSettle.from_json(line))
                except (ValueError, KeyError, TypeError) as exc:
                    log.error("unreadable line in the settle journal %s (%s): %s", journal, exc, line[:500])
        with self._lock:
            self._pending.extend(items)
            self.metrics.pending.set(len(self._pending))
        taken.unlink()
        if items:
            log.warning("settling %d settlement(s) journaled by a stopped worker (%s)", len(items), journal)
            self.flush()
            if self.pending:
                self._start()
        return len(items)

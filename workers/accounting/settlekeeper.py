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
refuses, they are appended to a journal file (JSON lines, ``LLMQ_SETTLE_JOURNAL``; by default one
per ledger Redis, :func:`default_journal`), which the next worker started with the same journal
settles first (:meth:`SettleKeeper.replay`). Not even by a kill: each kept settlement is written
ahead, before it is kept, to a file of this process's (``<journal>.<pid>.<ns>.keeping``, synced),
deleted once nothing is kept; a process killed with settlements kept (SIGKILL, OOM) leaves the file,
and the next start with the journal takes it over and settles it (a settlement already taken by
Redis is a no-op the second time).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

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


def default_journal(redis_url: str | None = None) -> Path:
    """``$XDG_STATE_HOME/llmq/unsettled-<ledger>.jsonl`` (``~/.local/state`` without the variable):
    one file per ledger Redis (``<ledger>``: a digest of ``redis_url`` without its credentials), so a
    worker of another deployment on the same host never settles this one's calls into its own ledger
    (the settlements name no Redis). ``unsettled.jsonl`` without a URL."""
    base = Path(os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")) / "llmq"
    if not redis_url:
        return base / "unsettled.jsonl"
    parts = urlsplit(redis_url)
    where = parts.netloc.rsplit("@", 1)[-1]  # credentials differ per user, the ledger does not
    digest = hashlib.sha256(f"{parts.scheme}://{where}{parts.path}".encode()).hexdigest()[:12]
    return base / f"unsettled-{digest}.jsonl"


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
        #: This process's write-ahead file (named at the first keep: the pid is the process's that keeps).
        self._ahead: Path | None = None
        #: Callers retrying their own settlement (the keeper was full): their lines are in the file too.
        self._retrying = 0

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
            self._write_ahead(item)
            if len(self._pending) < self.max_pending:
                self._pending.append(item)
                self.metrics.pending.set(len(self._pending))
                kept = True
            else:
                self._retrying += 1
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
            except Exception:
                delay = min(delay * 2, _MAX_BACKOFF_S)
                continue
            with self._lock:
                self._retrying -= 1
                self._drop_ahead_if_done()
            return

    def _write_ahead(self, item: PendingSettle) -> None:
        """Append ``item`` to this process's write-ahead file, synced (called holding ``_lock``). A
        file that cannot be written leaves the settlement in memory only (said once per failure)."""
        if self.journal is None:
            return
        if self._ahead is None:
            name = f"{self.journal.name}.{os.getpid()}.{time.time_ns()}.keeping"
            self._ahead = self.journal.with_name(name)
        try:
            self._ahead.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self._ahead, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                data = (item.to_json() + "\n").encode("utf-8")
                while data:
                    data = data[os.write(fd, data) :]
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            log.warning("could not write the settlement of %s ahead to %s (%s)", item.reservation.id, self._ahead, exc)

    def _drop_ahead_if_done(self) -> None:
        """Delete the write-ahead file once nothing is kept or retried (called holding ``_lock``)."""
        if self._ahead is not None and not self._pending and not self._retrying:
            with contextlib.suppress(OSError):
                self._ahead.unlink(missing_ok=True)

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
                    self._drop_ahead_if_done()
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
            with self._lock:
                self._drop_ahead_if_done()
            return 0
        lines = "".join(item.to_json() + "\n" for item in left)
        try:
            if self.journal is None:
                raise OSError("no settle journal configured")
            _append(self.journal, lines)
        except OSError as exc:
            for item in left:
                log.error("UNSETTLED (settle it by hand; %s): %s", exc, item.to_json())
            return 0  # the write-ahead file, if any, stays: the next start once this process is gone
        with self._lock:
            self._drop_ahead_if_done()  # in the journal now
        self.metrics.journaled.inc(len(left))
        log.warning("%d settlement(s) Redis refused written to %s; settled at the next start", len(left), self.journal)
        return len(left)

    def replay(self) -> int:
        """Settle what a stopped worker journaled. The file is taken first (renamed under the journal's
        lock, so two workers of a host starting at once do not both read it, and an append under way
        lands before or after, never in a file already read); so is a file a worker took and was
        killed before it finished with (``<journal>.<pid>.<ns>.replaying`` of a process that is gone).
        What Redis refuses now is kept and retried as usual, and written back to the journal before
        the taken file is deleted, so a worker killed before Redis takes it loses nothing (the next
        start settles it again: a settlement is idempotent). Returns how many were read."""
        journal = self.journal
        if journal is None:
            return 0
        taken = _orphans(journal)
        mine = journal.with_name(f"{journal.name}.{os.getpid()}.{time.time_ns()}.replaying")
        try:
            with _locked(journal, create=False) as held:
                if held:
                    journal.rename(mine)
                    taken.append(mine)
        except OSError:
            pass  # another worker took it
        if not taken:
            return 0
        items: list[PendingSettle] = []
        for path in taken:
            for line in path.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    try:
                        items.append(PendingSettle.from_json(line))
                    except (ValueError, KeyError, TypeError) as exc:
                        log.error("unreadable line in the settle journal %s (%s): %s", path, exc, line[:500])
        with self._lock:
            self._pending.extend(items)
            self.metrics.pending.set(len(self._pending))
        if items:
            log.warning("settling %d settlement(s) journaled by a stopped worker (%s)", len(items), journal)
            self.flush()
        with self._lock:
            left = [item for item in items if any(item is kept for kept in self._pending)]
        if left:
            try:
                _append(journal, "".join(item.to_json() + "\n" for item in left))
            except OSError as exc:  # the taken files stay: the next start after this one reads them
                log.error("could not write %d refused settlement(s) back to %s: %s", len(left), journal, exc)
                self._start()
                return len(items)
            self._start()
        for path in taken:
            path.unlink(missing_ok=True)
        return len(items)


@contextlib.contextmanager
def _locked(journal: Path, *, create: bool) -> Iterator[int | None]:
    """An exclusive ``flock`` on the file now at ``journal`` (its descriptor; ``None`` when there is
    none and ``create`` is false). A lock taken on a file renamed away meanwhile is retaken."""
    while True:
        try:
            fd = os.open(journal, os.O_WRONLY | os.O_APPEND | (os.O_CREAT if create else 0), 0o644)
        except FileNotFoundError:
            if create:
                raise
            yield None
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                same = os.fstat(fd).st_ino == os.stat(journal).st_ino
            except FileNotFoundError:
                same = False
            if same:
                yield fd
                return
        finally:
            os.close(fd)  # releases the lock


def _append(journal: Path, lines: str) -> None:
    """Append ``lines`` to the journal under its lock (workers of a host may share one), synced."""
    journal.parent.mkdir(parents=True, exist_ok=True)
    with _locked(journal, create=True) as fd:
        assert fd is not None
        data = lines.encode("utf-8")
        while data:
            data = data[os.write(fd, data) :]
        os.fsync(fd)


def _orphans(journal: Path) -> list[Path]:
    """Files of workers that are gone: taken from ``journal`` to replay and not finished with
    (``.replaying``), or written ahead of settlements they kept (``.keeping``: killed while Redis
    refused them); each taken over by this process (renamed, so two starting workers do not both
    take one)."""
    found: list[Path] = []
    prefix = f"{journal.name}."
    try:
        candidates = sorted(
            [*journal.parent.glob(f"{journal.name}.*.replaying"), *journal.parent.glob(f"{journal.name}.*.keeping")]
        )
    except OSError:
        return found
    for path in candidates:
        pid_text = path.name[len(prefix) :].split(".", 1)[0]
        if not pid_text.isdigit() or _alive(int(pid_text)):
            continue
        claimed = journal.with_name(f"{journal.name}.{os.getpid()}.{time.time_ns()}.replaying")
        try:
            path.rename(claimed)
        except OSError:
            continue  # another worker claimed it
        found.append(claimed)
    return found


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True

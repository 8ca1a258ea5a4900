"""The settle keeper on its own: refused settlements kept in order, retried until taken, bounded,
journaled when the worker stops and settled once from the journal at the next start.

The keeper's seam is the settle function it is given: here a recorder that refuses while told to,
as the ledger's ``settle_now`` raises while Redis refuses writes. Nothing is timed: retries are
driven by :meth:`SettleKeeper.flush` (``background=False``) and the keeper's sleep is a no-op that counts.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from tests.support.waits import until
from workers.accounting.ledger import LedgerUnavailableError
from workers.accounting.money import Reservation
from workers.accounting.settlekeeper import PendingSettle, SettleKeeper, default_journal


class FakeLedger:
    """Settles (job id, attempt) -> micros once each, refusing while ``full``."""

    def __init__(self) -> None:
        self.full = True
        self.charged: dict[str, int] = {}
        self.refusals = 0

    def settle_now(self, reservation: Reservation, actual: int) -> None:
        if self.full:
            self.refusals += 1
            raise LedgerUnavailableError("budget ledger unavailable during settle (OutOfMemoryError)")
        self.charged.setdefault(reservation.id, actual)


def _r(job: str, attempt: int = 1) -> Reservation:
    return Reservation(job, attempt, "default", "2026-12", 100, model="gpt-4o-mini", tags=("a",), user="u")


def test_refused_settlements_are_kept_in_order_and_taken_when_redis_takes_writes(tmp_path: Path) -> None:
    ledger = FakeLedger()
    registry = CollectorRegistry()
    keeper = SettleKeeper(ledger.settle_now, journal=tmp_path / "j.jsonl", registry=registry, background=False)
    for i in range(3):
        keeper.keep(_r(f"j{i}"), 10 + i, LedgerUnavailableError("full"))
    assert [p.reservation.id for p in keeper.pending] == ["j0#1", "j1#1", "j2#1"]
    assert registry.get_sample_value("llmq_settles_pending") == 3
    assert registry.get_sample_value("llmq_settles_refused_total") == 3
    assert keeper.flush() == 0 and len(keeper.pending) == 3  # still refused: nothing lost
    ledger.full = False
    assert keeper.flush() == 3 and keeper.pending == []
    assert ledger.charged == {"j0#1": 10, "j1#1": 11, "j2#1": 12}
    assert registry.get_sample_value("llmq_settles_pending") == 0


def test_a_full_keeper_makes_the_caller_retry_its_own_settlement() -> None:
    ledger = FakeLedger()
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:  # Redis takes writes again after the caller's third wait
        sleeps.append(seconds)
        if len(sleeps) == 3:
            ledger.full = False

    keeper = SettleKeeper(ledger.settle_now, max_pending=1, sleep=sleep, background=False)
    keeper.keep(_r("kept"), 5, LedgerUnavailableError("full"))
    keeper.keep(_r("caller"), 7, LedgerUnavailableError("full"))  # returns once it is settled
    assert ledger.charged == {"caller#1": 7} and [p.reservation.id for p in keeper.pending] == ["kept#1"]
    assert sleeps == sorted(sleeps) and len(sleeps) == 3  # backing off


def test_what_is_still_refused_at_shutdown_is_journaled_and_settled_once_at_the_next_start(tmp_path: Path) -> None:
    journal = tmp_path / "state" / "unsettled.jsonl"
    ledger = FakeLedger()
    keeper = SettleKeeper(ledger.settle_now, journal=journal, sleep=lambda s: None, background=False)
    keeper.keep(_r("a", 2), 123, LedgerUnavailableError("full"))
    assert keeper.close(timeout_s=0) == 1
    line = PendingSettle.from_json(journal.read_text().strip())
    assert line == PendingSettle(_r("a", 2), 123)  # the reservation's scopes, tags, user, model survive

    ledger.full = False
    again = SettleKeeper(ledger.settle_now, journal=journal)
    assert again.replay() == 1 and again.pending == [] and not journal.exists()
    assert ledger.charged == {"a#2": 123}
    assert SettleKeeper(ledger.settle_now, journal=journal).replay() == 0  # nothing left to read


def test_without_a_writable_journal_each_settlement_is_logged_in_full(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    ledger = FakeLedger()
    keeper = SettleKeeper(
        ledger.settle_now, journal=blocker / "sub" / "j.jsonl", sleep=lambda s: None, background=False
    )
    keeper.keep(_r("b"), 9, LedgerUnavailableError("full"))
    assert keeper.close(timeout_s=0) == 0
    logged = [r.getMessage() for r in caplog.records if "UNSETTLED" in r.getMessage()]
    assert len(logged) == 1 and '"job_id":"b"' in logged[0] and '"actual_micros":9' in logged[0]


def test_a_refused_release_is_kept_and_retried_too(tmp_path: Path) -> None:
    """A reservation whose call failed before any output is released when Redis takes writes again
    (not held until its lease expires); the journal keeps which entries are releases."""
    ledger = FakeLedger()
    released: list[str] = []

    def release_now(reservation: Reservation) -> None:
        if ledger.full:
            raise LedgerUnavailableError("full")
        released.append(reservation.id)

    registry = CollectorRegistry()
    keeper = SettleKeeper(ledger.settle_now, release=release_now, registry=registry, background=False)
    keeper.keep_release(_r("r"), LedgerUnavailableError("full"))
    keeper.keep(_r("s"), 4, LedgerUnavailableError("full"))
    assert registry.get_sample_value("llmq_settles_refused_total") == 1  # releases are not settlements
    assert PendingSettle.from_json(keeper.pending[0].to_json()).release
    ledger.full = False
    assert keeper.flush() == 2
    assert released == ["r#1"] and ledger.charged == {"s#1": 4}


def test_a_journal_replayed_while_redis_still_refuses_survives_a_kill_before_it_settles(tmp_path: Path) -> None:
    """The next start takes the journal while Redis is still full: until its entries settle they stay
    on disk, so a worker SIGKILLed meanwhile (no close, no journaling at shutdown) loses none; the
    start after settles each once."""
    journal = tmp_path / "unsettled.jsonl"
    ledger = FakeLedger()
    first = SettleKeeper(ledger.settle_now, journal=journal, sleep=lambda s: None, background=False)
    first.keep(_r("paid", 1), 77, LedgerUnavailableError("full"))
    first.keep_release(_r("freed", 1), LedgerUnavailableError("full"))
    assert first.close(timeout_s=0) == 2

    started = SettleKeeper(ledger.settle_now, journal=journal, sleep=lambda s: None, background=False)
    assert started.replay() == 2 and len(started.pending) == 2  # Redis still refuses
    del started  # SIGKILLed: never closed

    ledger.full = False
    released: list[str] = []
    after = SettleKeeper(ledger.settle_now, release=lambda r: released.append(r.id), journal=journal, background=False)
    assert after.replay() == 2 and after.pending == []
    assert ledger.charged == {"paid#1": 77} and released == ["freed#1"]
    assert not journal.exists() and list(tmp_path.iterdir()) == []  # nothing left behind to replay again
    assert SettleKeeper(ledger.settle_now, journal=journal).replay() == 0


def test_a_journal_taken_by_a_worker_killed_before_it_wrote_back_is_settled_by_the_next(tmp_path: Path) -> None:
    """A worker killed between taking the journal and writing back what Redis still refused leaves
    the taken file (``<journal>.<pid>.<ns>.replaying``); the next start takes it over because that
    process is gone, and settles it once. A live process's taken file is left to it."""
    journal = tmp_path / "unsettled.jsonl"
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, check=True)
    dead_pid = int(gone.stdout)
    (tmp_path / f"unsettled.jsonl.{dead_pid}.1.replaying").write_text(PendingSettle(_r("k"), 5).to_json() + "\n")
    live = tmp_path / f"unsettled.jsonl.{os.getppid()}.2.replaying"
    live.write_text(PendingSettle(_r("other"), 6).to_json() + "\n")
    ledger = FakeLedger()
    ledger.full = False
    keeper = SettleKeeper(ledger.settle_now, journal=journal, background=False)
    assert keeper.replay() == 1 and keeper.pending == []
    assert ledger.charged == {"k#1": 5}
    assert sorted(p.name for p in tmp_path.iterdir()) == [live.name]


def test_a_kept_settlement_is_written_ahead_until_redis_takes_it(tmp_path: Path) -> None:
    """While a settlement is kept its line is on disk in this process's write-ahead file; once Redis
    takes every kept one the file is gone (nothing for a later start to settle again)."""
    journal = tmp_path / "unsettled.jsonl"
    ledger = FakeLedger()
    keeper = SettleKeeper(ledger.settle_now, journal=journal, background=False)
    keeper.keep(_r("a"), 5, LedgerUnavailableError("full"))
    keeper.keep_release(_r("b"), LedgerUnavailableError("full"))
    (ahead,) = tmp_path.iterdir()
    assert ahead.name.startswith(f"unsettled.jsonl.{os.getpid()}.") and ahead.name.endswith(".keeping")
    lines = [PendingSettle.from_json(line) for line in ahead.read_text().splitlines()]
    assert [(p.reservation.id, p.actual_micros, p.release) for p in lines] == [("a#1", 5, False), ("b#1", 0, True)]
    ledger.full = False
    assert keeper.flush() == 2
    assert list(tmp_path.iterdir()) == []
    assert keeper.close(timeout_s=0) == 0 and list(tmp_path.iterdir()) == []


_KEEPER = """
import sys, pathlib
from workers.accounting.ledger import LedgerUnavailableError
from workers.accounting.money import Reservation
from workers.accounting.settlekeeper import SettleKeeper

def refuse(reservation, actual):
    raise LedgerUnavailableError("full")

keeper = SettleKeeper(refuse, journal=pathlib.Path(sys.argv[1]), background=False)
for i in range(3):
    keeper.keep(Reservation(f"paid-{i}", 1, "default", "2026-12", 100, model="m"), 10 + i, LedgerUnavailableError("full"))
print("kept", flush=True)
sys.stdin.read()  # until killed
"""


def test_a_worker_killed_with_kept_settlements_loses_none(tmp_path: Path) -> None:
    """SIGKILL (or the OOM killer) gives a worker no shutdown, so nothing is journaled then: the
    settlements it kept are in its write-ahead file, which the next start takes over (the process is
    gone) and settles, each once."""
    journal = tmp_path / "unsettled.jsonl"
    proc = subprocess.Popen(
        [sys.executable, "-c", _KEEPER, str(journal)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=Path.cwd()
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"kept\n"
        proc.kill()
        proc.wait(HANG_GUARD_S)
    finally:
        if proc.poll() is None:
            proc.kill()
    ledger = FakeLedger()
    live = SettleKeeper(ledger.settle_now, journal=journal, background=False)
    live.keep(_r("mine"), 1, LedgerUnavailableError("full"))  # a live keeper's file is not taken
    ledger.full = False
    after = SettleKeeper(ledger.settle_now, journal=journal, background=False)
    assert after.replay() == 3 and after.pending == []
    assert ledger.charged == {"paid-0#1": 10, "paid-1#1": 11, "paid-2#1": 12}
    assert [p.name.endswith(".keeping") for p in tmp_path.iterdir()] == [True]  # the live one's
    assert live.flush() == 1 and list(tmp_path.iterdir()) == []
    assert SettleKeeper(ledger.settle_now, journal=journal, background=False).replay() == 0


HANG_GUARD_S = 120
_APPENDER = """
import sys
from workers.accounting.ledger import LedgerUnavailableError
from workers.accounting.money import Reservation
from workers.accounting.settlekeeper import SettleKeeper

def refuse(reservation, actual):
    raise LedgerUnavailableError("full")

name, journal, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])
for n in range(rounds):
    keeper = SettleKeeper(refuse, journal=__import__("pathlib").Path(journal), sleep=lambda s: None, background=False)
    for i in range(40):  # ~10 kB per shutdown: more than one buffer
        reservation = Reservation(f"{name}-{n}-{i}", 1, "default", "2026-12", 100, model="m", tags=("t" * 100,))
        keeper.keep(reservation, 1, LedgerUnavailableError("full"))
    keeper.close(timeout_s=0)
"""


def test_workers_of_one_host_sharing_the_journal_lose_no_line(tmp_path: Path) -> None:
    """Two worker processes journal at shutdown into one file while a third starts and takes it: every
    settlement is read exactly once, none torn (appends and the take hold the journal's lock)."""
    journal = tmp_path / "unsettled.jsonl"
    ledger = FakeLedger()
    ledger.full = False
    rounds = 15
    writers = [
        subprocess.Popen([sys.executable, "-c", _APPENDER, name, str(journal), str(rounds)], cwd=Path.cwd())
        for name in ("w1", "w2")
    ]
    read = 0

    def take_while_they_append() -> bool:
        nonlocal read
        read += SettleKeeper(ledger.settle_now, journal=journal, background=False).replay()
        return all(w.poll() is not None for w in writers)

    until(take_while_they_append, "the appending workers to finish", HANG_GUARD_S, poll_s=0.001)
    assert [w.wait(timeout=HANG_GUARD_S) for w in writers] == [0, 0]
    read += SettleKeeper(ledger.settle_now, journal=journal, background=False).replay()
    assert read == len(ledger.charged) == 2 * rounds * 40
    assert list(tmp_path.iterdir()) == []


def test_workers_of_two_deployments_on_one_host_settle_only_their_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The default journal is one file per ledger Redis: a worker of another deployment (another Redis)
    started on the same host does not settle this one's refused calls into its own ledger (the lines
    name no Redis), and the next worker of this deployment does, whatever password it uses."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    prod, staging = FakeLedger(), FakeLedger()
    stopping = SettleKeeper(
        prod.settle_now, journal=default_journal("redis://:pw@prod:6379/0"), sleep=lambda s: None, background=False
    )
    stopping.keep(_r("prod-job"), 42, LedgerUnavailableError("full"))
    assert stopping.close(timeout_s=0) == 1
    staging.full = prod.full = False
    assert SettleKeeper(staging.settle_now, journal=default_journal("redis://staging:6379/0")).replay() == 0
    assert SettleKeeper(staging.settle_now, journal=default_journal("redis://prod:6379/1")).replay() == 0
    assert staging.charged == {}
    assert SettleKeeper(prod.settle_now, journal=default_journal("redis://user:other@prod:6379/0")).replay() == 1
    assert prod.charged == {"prod-job#1": 42}
    assert default_journal("redis://prod:6379/0").parent == tmp_path / "llmq"

"""The settle keeper on its own: refused settlements kept in order, retried until taken, bounded,
journaled when the worker stops and settled once from the journal at the next start.

The keeper's seam is the settle function it is given: here a recorder that refuses while told to,
as the ledger's ``settle_now`` raises while Redis refuses writes. Nothing is timed: retries are
driven by :meth:`SettleKeeper.flush` (``background=False``) and the keeper's sleep is a no-op that counts.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from workers.accounting.ledger import LedgerUnavailableError
from workers.accounting.money import Reservation
from workers.accounting.settlekeeper import PendingSettle, SettleKeeper


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

"""The budget ledger against a real Redis: atomic scopes, idempotent settle, leases, fail closed."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from decimal import Decimal

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from llmq.localredis import free_port
from workers.accounting.ledger import (
    GLOBAL_SCOPE,
    Ledger,
    LedgerUnavailableError,
    Reservation,
    from_micros,
    to_micros,
)
from workers.jobs.flushbatch import FlushBatcher
from workers.llm.errors import BudgetBusyError, BudgetExceededError, is_retryable


class Clock:
    """The ledger's clock seam: settable, so month rollover needs no waiting."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture(params=["direct", "batched"])
def make_ledger(redis_client: redis.Redis, request: pytest.FixtureRequest) -> Iterator[Callable[..., Ledger]]:
    """Each ledger test twice: a round trip per call, and as a worker runs it, its reservations and
    settlements sent in shared batches (``Ledger.batch_scripts`` over ``FlushBatcher``)."""
    made: list[Ledger] = []

    def make(**kwargs: object) -> Ledger:
        ledger = Ledger(redis_client, **kwargs)  # type: ignore[arg-type]
        if request.param == "batched":
            ledger.batch_scripts(lambda script: FlushBatcher(redis_client, script))
        made.append(ledger)
        return ledger

    yield make
    for ledger in made:
        ledger.close_batches()


def spent(ledger: Ledger, scope: str = GLOBAL_SCOPE, month: str | None = None) -> tuple[float, float]:
    status = next(s for s in ledger.show(month).scopes if s.scope == scope)
    return status.spent_usd, status.reserved_usd


def test_reserve_then_settle_charges_actual_cost(make_ledger: Callable[..., Ledger]) -> None:
    ledger = make_ledger(monthly_limit_usd=10, tenant_limits_usd={"acme": 5})
    r = ledger.reserve("job-1", 1, "acme", Decimal("0.25"))
    assert (r.amount_micros, r.already_settled, r.id) == (250_000, False, "job-1#1")
    assert [(s.scope, s.reserved_micros, s.limit_micros) for s in r.scopes] == [
        ("global", 250_000, 10_000_000),
        ("tenant:acme", 250_000, 5_000_000),
    ]
    assert spent(ledger) == (0.0, 0.25) and spent(ledger, "tenant:acme") == (0.0, 0.25)
    settlement = ledger.settle(r, Decimal("0.0123"))
    assert settlement.charged and settlement.amount_micros == 12_300
    assert [(s.scope, s.spent_micros, s.reserved_micros) for s in settlement.scopes] == [
        ("global", 12_300, 0),
        ("tenant:acme", 12_300, 0),
    ]
    assert spent(ledger) == (0.0123, 0.0) and spent(ledger, "tenant:acme") == (0.0123, 0.0)


def test_settle_is_idempotent_per_job_attempt(make_ledger: Callable[..., Ledger]) -> None:
    ledger = make_ledger(monthly_limit_usd=10)
    first = ledger.reserve("job-1", 1, "t", 1)
    assert ledger.settle(first, 0.5).charged
    assert ledger.settle(first, 0.5) == ledger.settle(first, 0.7)  # repeats are no-ops
    assert not ledger.settle(first, 0.5).charged
    # a redelivered job re-running attempt 1 learns it was settled and is not charged again
    again = ledger.reserve("job-1", 1, "t", 1)
    assert again.already_settled and again.settled_micros == 500_000
    assert not ledger.settle(again, 0.5).charged and ledger.release(again) == 0
    # a retry is a new attempt and is charged
    assert ledger.settle(ledger.reserve("job-1", 2, "t", 1), 0.25).charged
    assert spent(ledger) == (0.75, 0.0)


def test_many_settle_in_one_round_trip_each_once(make_ledger: Callable[..., Ledger]) -> None:
    """settle_many (a provider batch's lines): the same script as settle, so a repeat charges nothing."""
    ledger = make_ledger(monthly_limit_usd=10, tenant_limits_usd={"acme": 5})
    held = [ledger.reserve(f"job-{i}", 1000, "acme", 1) for i in range(3)]
    first = ledger.settle_many([(r, Decimal("0.25")) for r in held])
    assert [s.charged for s in first] == [True, True, True]
    assert [s.scope for s in first[-1].scopes] == ["global", "tenant:acme"]
    assert spent(ledger) == (0.75, 0.0) and spent(ledger, "tenant:acme") == (0.75, 0.0)
    again = ledger.settle_many([(r, Decimal("0.5")) for r in held])
    assert [(s.charged, s.amount_micros) for s in again] == [(False, 250_000)] * 3
    assert spent(ledger) == (0.75, 0.0)


def test_many_reserve_in_one_round_trip_with_each_refusal(make_ledger: Callable[..., Ledger]) -> None:
    """reserve_many: each call's reservation, or the error reserve would raise for it."""
    ledger = make_ledger(monthly_limit_usd=10, tenant_limits_usd={"acme": 1})
    calls = [ledger.reserve_call(f"job-{i}", 1000, "acme", Decimal("0.4")) for i in range(3)]
    found = ledger.reserve_many(calls)
    assert [type(f).__name__ for f in found] == ["Reservation", "Reservation", BudgetBusyError.__name__]
    assert spent(ledger, "tenant:acme") == (0.0, 0.8)
    again = ledger.reserve_many(calls[:1])  # the same call again replaces its lease
    assert isinstance(again[0], Reservation) and spent(ledger, "tenant:acme") == (0.0, 0.8)


def test_re_reserving_an_attempt_replaces_its_lease(make_ledger: Callable[..., Ledger]) -> None:
    ledger = make_ledger(monthly_limit_usd=10)
    ledger.reserve("job-1", 1, "t", 2)
    ledger.reserve("job-1", 1, "t", 3)
    assert spent(ledger) == (0.0, 3.0)


def test_release_frees_without_charging(make_ledger: Callable[..., Ledger]) -> None:
    ledger = make_ledger(monthly_limit_usd=1)
    r = ledger.reserve("job-1", 1, "t", 0.8)
    with pytest.raises(BudgetBusyError):  # fits once job-1's reservation is gone
        ledger.reserve("job-2", 1, "t", 0.3)
    assert ledger.release(r) == 800_000 and ledger.release(r) == 0
    assert spent(ledger) == (0.0, 0.0)
    ledger.reserve("job-2", 1, "t", 0.3)


def test_concurrent_reservations_never_exceed_the_limit(make_ledger: Callable[..., Ledger]) -> None:
    ledger = make_ledger(monthly_limit_usd=1, kill_ratio=1.0)
    accepted: list[Reservation] = []
    refused: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(16)

    def worker(n: int) -> None:
        start.wait()
        for i in range(20):
            try:
                r = ledger.reserve(f"job-{n}-{i}", 1, f"tenant{n % 3}", Decimal("0.03"))
            except (BudgetExceededError, BudgetBusyError) as exc:
                with lock:
                    refused.append(exc.code or "")
            else:
                with lock:
                    accepted.append(r)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(accepted) == 33  # floor(1 / 0.03): not one more
    # nothing settled: every refusal is "wait for the reservations in flight", none "never fits"
    assert set(refused) == {"budget_busy"} and len(refused) == 16 * 20 - 33
    assert max(s.reserved_micros for r in accepted for s in r.scopes if s.scope == GLOBAL_SCOPE) <= 1_000_000
    assert spent(ledger) == (0.0, 0.99)


def test_never_fits_is_told_from_busy_with_reservations_in_flight(make_ledger: Callable[..., Ledger]) -> None:
    ledger = make_ledger(monthly_limit_usd=1, tenant_limits_usd={"small": 0.5})
    ledger.settle(ledger.reserve("done", 1, "small", 0.3), 0.3)  # settled: 0.3 of both limits
    held = ledger.reserve("in-flight", 1, "other", 0.6)  # global: 0.3 spent + 0.6 reserved
    with pytest.raises(BudgetBusyError) as busy:  # 0.3 + 0.2 <= 1 once the 0.6 settles
        ledger.reserve("waits", 1, "other", 0.2)
    assert busy.value.code == "budget_busy" and busy.value.details["reserved_usd"] == 0.6  # type: ignore[index]
    with pytest.raises(BudgetExceededError) as never:  # 0.3 spent + 0.8 > 1 whatever settles
        ledger.reserve("too-big", 1, "other", 0.8)
    assert never.value.code == "budget_limit"
    # the most severe refusal over the scopes wins: global busy, tenant:small never fits -> limit
    with pytest.raises(BudgetExceededError) as both:
        ledger.reserve("small-job", 1, "small", 0.25)
    assert both.value.code == "budget_limit" and both.value.details["scope"] == "tenant:small"  # type: ignore[index]
    ledger.settle(held, 0.01)
    ledger.reserve("waits", 1, "other", 0.2)  # fits now


def test_concurrent_reserve_and_settle_never_overspend(make_ledger: Callable[..., Ledger]) -> None:
    ledger = make_ledger(monthly_limit_usd=2)

    def worker(n: int) -> None:
        for i in range(25):
            try:
                r = ledger.reserve(f"job-{n}-{i}", 1, "t", Decimal("0.05"))
            except (BudgetExceededError, BudgetBusyError):
                continue
            ledger.settle(r, Decimal("0.04"))  # actual below the worst case, as usual

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    total, reserved = spent(ledger)
    assert reserved == 0.0
    assert 1.8 <= total <= 2.0  # stopped by the kill switch at 90 %, never past the limit


def test_expired_leases_free_themselves(make_ledger: Callable[..., Ledger]) -> None:
    ledger = make_ledger(monthly_limit_usd=1)
    dead = ledger.reserve("crashed-job", 1, "t", 0.9, lease_s=0.5)  # its worker dies: never settled
    with pytest.raises(BudgetBusyError):
        ledger.reserve("job-2", 1, "t", 0.5)
    time.sleep(0.7)
    assert spent(ledger) == (0.0, 0.0)  # show() already excludes the expired lease
    ledger.reserve("job-2", 1, "t", 0.5)
    # a late settle of the expired reservation still charges: the provider billed us
    assert ledger.settle(dead, 0.1).charged
    assert spent(ledger) == (0.1, 0.5)


def test_kill_switch_refuses_new_jobs_at_90_percent(make_ledger: Callable[..., Ledger]) -> None:
    ledger = make_ledger(monthly_limit_usd=10)
    ledger.settle(ledger.reserve("job-1", 1, "t", 9), Decimal("8.99"))
    ledger.release(ledger.reserve("job-2", 1, "t", 0.01))  # 89.9 %: still open
    ledger.settle(ledger.reserve("job-3", 1, "t", 0.01), Decimal("0.01"))  # now exactly 90 %
    with pytest.raises(BudgetExceededError) as info:
        ledger.reserve("job-4", 1, "t", 0)  # even a free call
    err = info.value
    assert err.code == "kill_switch" and not is_retryable(err)
    assert "global" in err.message and "90%" in err.message and "$10" in err.message
    assert err.details is not None and err.details["scope"] == "global" and err.details["spent_usd"] == 9.0
    status = ledger.show().scopes[0]
    assert (status.state, status.kill_switch_usd, status.remaining_usd) == ("kill_switch", 9.0, 1.0)


def test_kill_switch_ratio_is_configurable_and_applies_to_tenants(make_ledger: Callable[..., Ledger]) -> None:
    ledger = make_ledger(tenant_limits_usd={"small": 1}, kill_ratio=0.5)
    ledger.settle(ledger.reserve("job-1", 1, "small", 0.5), 0.5)
    with pytest.raises(BudgetExceededError, match="tenant:small") as info:
        ledger.reserve("job-2", 1, "small", 0.01)
    assert info.value.code == "kill_switch"
    ledger.reserve("job-3", 1, "other", 100)  # the global scope has no limit: accounted only


def test_stored_limits_win_over_defaults(make_ledger: Callable[..., Ledger]) -> None:
    ledger = make_ledger(monthly_limit_usd=100)
    ledger.set_limit(1)
    with pytest.raises(BudgetExceededError, match=r"\$1 limit") as info:
        ledger.reserve("job-1", 1, "t", 2)
    assert info.value.code == "budget_limit" and info.value.details["limit_usd"] == 1.0  # type: ignore[index]
    ledger.set_limit(None)
    ledger.reserve("job-1", 1, "t", 2)
    ledger.set_limit(0, tenant="frozen")
    with pytest.raises(BudgetExceededError, match="tenant:frozen"):
        ledger.reserve("job-2", 1, "frozen", 0)


def test_month_rollover_by_utc_calendar(make_ledger: Callable[..., Ledger]) -> None:
    clock = Clock(datetime(2026, 1, 31, 23, 59, 59, tzinfo=UTC))
    ledger = make_ledger(monthly_limit_usd=1, clock=clock)
    ledger.settle(ledger.reserve("job-1", 1, "t", 1), 0.85)
    late = ledger.reserve("job-2", 1, "t", 0.1)  # reserved in January...
    with pytest.raises(BudgetBusyError):
        ledger.reserve("job-3", 1, "t", 0.1)
    clock.now = datetime(2026, 2, 1, 0, 0, 0, tzinfo=UTC)
    assert ledger.month() == "2026-02"
    ledger.reserve("job-3", 1, "t", 0.5)  # a fresh month
    ledger.settle(late, 0.09)  # ...settles into January
    assert spent(ledger, month="2026-01") == (0.94, 0.0)
    assert spent(ledger) == (0.0, 0.5)
    # a non-UTC wall clock still picks the UTC month
    clock.now = datetime.fromisoformat("2026-02-28T23:30:00-05:00")
    assert ledger.month() == "2026-03"


def test_reset_clears_spend_but_keeps_limits_and_settlements(make_ledger: Callable[..., Ledger]) -> None:
    ledger = make_ledger()
    ledger.set_limit(1, tenant="a")
    first = ledger.reserve("job-1", 1, "a", 0.5)
    ledger.settle(first, 0.5)
    ledger.settle(ledger.reserve("job-2", 1, "b", 0.5), 0.5)
    assert ledger.reset(tenant="a") == ["tenant:a"]
    assert spent(ledger, "tenant:a") == (0.0, 0.0) and spent(ledger) == (1.0, 0.0)
    assert ledger.reset() == ["global", "tenant:b"]
    scopes = {s.scope: (s.spent_usd, s.limit_usd) for s in ledger.show().scopes}
    assert scopes == {"global": (0.0, None), "tenant:a": (0.0, 1.0)}
    assert not ledger.settle(first, 0.5).charged


def test_redis_unreachable_fails_closed() -> None:
    # redis-py 8 retries connection errors with backoff by default (~13 s here): bound it, as
    # workers should for the ledger's client, so a refusal is quick as well as certain.
    dead = redis.Redis(
        host="127.0.0.1", port=free_port(), socket_connect_timeout=0.2, socket_timeout=0.2, retry=Retry(NoBackoff(), 1)
    )
    ledger = Ledger(dead, monthly_limit_usd=100)
    with pytest.raises(LedgerUnavailableError) as info:
        ledger.reserve("job-1", 1, "t", 0.01)
    err = info.value
    assert isinstance(err, BudgetExceededError) and err.code == "ledger_unavailable" and not is_retryable(err)
    assert "refusing to spend without accounting" in err.message and "ConnectionError" in err.message
    reservation = Reservation("job-1", 1, "t", "2026-01", 10_000)
    with pytest.raises(LedgerUnavailableError):
        ledger.settle(reservation, 0.01)
    with pytest.raises(LedgerUnavailableError):
        ledger.release(reservation)


def test_budget_errors_survive_the_celery_json_round_trip(make_ledger: Callable[..., Ledger]) -> None:
    ledger = make_ledger(monthly_limit_usd=0)
    with pytest.raises(BudgetExceededError) as info:
        ledger.reserve("job-1", 1, "t", 1)
    err = info.value
    rebuilt = type(err)(*err.args)
    assert (rebuilt.message, rebuilt.code, rebuilt.details) == (err.message, err.code, err.details)
    unavailable = LedgerUnavailableError("down", code="ledger_unavailable")
    assert type(unavailable)(*unavailable.args).to_info().type == "ledger_unavailable"


def test_money_is_integer_micro_dollars(make_ledger: Callable[..., Ledger]) -> None:
    assert to_micros(Decimal("0.0000001")) == 1  # rounded up, never down
    assert to_micros(0.1) == 100_000 and to_micros(3) == 3_000_000
    with pytest.raises(ValueError):
        to_micros(-1)
    ledger = make_ledger()
    for i in range(100):
        ledger.settle(ledger.reserve(f"job-{i}", 1, "t", 0.1), 0.1)
    total = ledger.reserve("probe", 1, "t", 0).scopes[0].spent_micros
    assert total == 10_000_000 and from_micros(total) == Decimal(10)  # 100 × 0.1, no float drift

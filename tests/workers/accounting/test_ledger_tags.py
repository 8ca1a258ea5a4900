"""Tags and end users in the ledger: budgets through the same reservation, the spend report's rows."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
import redis

from workers.accounting.ledger import Ledger, Reservation
from workers.llm.errors import BudgetBusyError, BudgetExceededError


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def make_ledger(redis_client: redis.Redis) -> Callable[..., Ledger]:
    def make(**kwargs: object) -> Ledger:
        return Ledger(redis_client, **kwargs)  # type: ignore[arg-type]

    return make


def rows(ledger: Ledger, by: str, **kwargs: object) -> dict[str, float]:
    report = ledger.report(by, **kwargs)  # type: ignore[arg-type]
    return {r.value: r.spent_usd for r in report.rows}


def test_tags_and_user_without_limits_keep_no_budget_state(
    make_ledger: Callable[..., Ledger], redis_client: redis.Redis
) -> None:
    ledger = make_ledger()
    r = ledger.reserve("job-1", 1, "acme", 1, tags=["checkout", "beta"], user="u-1", model="openai:gpt-4o")
    assert r.held == ("global", "tenant:acme")  # what a job without tags holds: nothing more
    ledger.settle(r, Decimal("0.25"))
    assert [s.scope for s in ledger.show().scopes] == ["global", "tenant:acme"]
    month = ledger.month()
    assert not any(b"tag:" in k or b"user:" in k for k in redis_client.keys(f"llmq:{{budget}}:{month}:*"))
    assert rows(ledger, "tag", days=1) == {"beta": 0.25, "checkout": 0.25}
    assert rows(ledger, "user", days=1) == {"u-1": 0.25}
    assert rows(ledger, "model") == {"openai:gpt-4o": 0.25}
    report = ledger.report("tenant", days=7)
    assert [(r.value, r.spent_usd) for r in report.rows] == [("acme", 0.25)]
    assert report.total_usd == 0.25 and report.other_usd == 0.0


def test_a_tag_budget_refuses_through_the_same_reservation(make_ledger: Callable[..., Ledger]) -> None:
    ledger = make_ledger()
    ledger.set_limit(1, tag="search")
    held = ledger.reserve("job-1", 1, "acme", Decimal("0.6"), tags=["search"])
    assert held.held == ("global", "tenant:acme", "tag:search")
    with pytest.raises(BudgetBusyError) as busy:  # fits once job-1 settles
        ledger.reserve("job-2", 1, "other-tenant", Decimal("0.6"), tags=["other", "search"])
    assert busy.value.details["scope"] == "tag:search"  # type: ignore[index]
    ledger.reserve("job-3", 1, "acme", Decimal("0.6"), tags=["other"])  # another tag: not limited
    ledger.settle(held, Decimal("0.9"))
    with pytest.raises(BudgetExceededError) as kill:  # 90 % of the tag's limit is spent
        ledger.reserve("job-4", 1, "acme", 0, tags=["search"])
    assert kill.value.code == "kill_switch" and "tag:search" in kill.value.message
    status = {s.scope: s for s in ledger.show().scopes}["tag:search"]
    assert (status.spent_usd, status.reserved_usd, status.limit_usd, status.state) == (0.9, 0.0, 1.0, "kill_switch")


def test_a_user_budget_from_the_config_defaults(make_ledger: Callable[..., Ledger]) -> None:
    ledger = make_ledger(user_limits_usd={"u-big": 0.5}, tag_limits_usd={"t": 10})
    ledger.settle(ledger.reserve("job-1", 1, "acme", Decimal("0.4"), user="u-big"), Decimal("0.4"))
    with pytest.raises(BudgetExceededError) as info:
        ledger.reserve("job-2", 1, "acme", Decimal("0.2"), user="u-big")
    assert info.value.code == "budget_limit" and info.value.details["scope"] == "user:u-big"  # type: ignore[index]
    ledger.reserve("job-3", 1, "acme", Decimal("0.2"), user="u-small")
    scopes = {s.scope: (s.spent_usd, s.limit_usd) for s in ledger.show().scopes}
    assert scopes["user:u-big"] == (0.4, 0.5) and scopes["tag:t"] == (0.0, 10.0) and "user:u-small" not in scopes


def test_concurrent_reservations_never_pass_a_tag_budget(make_ledger: Callable[..., Ledger]) -> None:
    ledger = make_ledger(kill_ratio=1.0)
    ledger.set_limit(Decimal("1.5"), tag="feature-x")
    accepted: list[Reservation] = []
    lock = threading.Lock()
    start = threading.Barrier(12)

    def worker(n: int) -> None:
        start.wait()
        for i in range(20):
            try:
                r = ledger.reserve(f"job-{n}-{i}", 1, f"t{n % 3}", Decimal("0.03"), tags=["feature-x"], user=f"u{n}")
            except (BudgetExceededError, BudgetBusyError):
                continue
            with lock:
                accepted.append(r)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(accepted) == 50  # 1.5 / 0.03: not one more
    for r in accepted[:20]:
        ledger.settle(r, Decimal("0.03"))
    for r in accepted[20:]:
        ledger.release(r)
    status = {s.scope: s for s in ledger.show().scopes}
    assert (status["tag:feature-x"].spent_usd, status["tag:feature-x"].reserved_usd) == (0.6, 0.0)
    assert status["global"].reserved_usd == 0.0


def test_a_limit_set_mid_month_starts_from_what_the_report_shows(make_ledger: Callable[..., Ledger]) -> None:
    ledger = make_ledger()
    ledger.settle(ledger.reserve("job-1", 1, "acme", 1, tags=["late"], user="u-1"), Decimal("0.7"))
    ledger.set_limit(1, tag="late")
    ledger.set_limit(2, user="u-1")
    scopes = {s.scope: s.spent_usd for s in ledger.show().scopes}
    assert scopes["tag:late"] == 0.7 and scopes["user:u-1"] == 0.7
    with pytest.raises(BudgetExceededError):
        ledger.reserve("job-2", 1, "acme", Decimal("0.5"), tags=["late"])
    # removing the limit: a lease taken while it had one is still released
    held = ledger.reserve("job-3", 1, "acme", Decimal("0.1"), user="u-1")
    ledger.set_limit(None, user="u-1")
    assert ledger.release(held) == 100_000
    assert {s.scope: s.reserved_usd for s in ledger.show().scopes}["user:u-1"] == 0.0


def test_the_report_keeps_the_top_k_and_sums_the_rest_exactly(make_ledger: Callable[..., Ledger]) -> None:
    ledger = make_ledger(report_rows={"user": 3})
    charges = [("a", "0.10"), ("b", "0.20"), ("c", "0.30"), ("d", "0.05"), ("e", "0.50"), ("a", "0.01")]
    for i, (user, usd) in enumerate(charges):
        ledger.settle(ledger.reserve(f"job-{i}", 1, "acme", 1, user=user), Decimal(usd))
    report = ledger.report("user")
    # d (0.05) was smaller than every row: summed in other; e (0.50) took a's row (0.10, now in other);
    # a came back with 0.01, smaller than every row: other again
    assert [(r.value, r.spent_usd) for r in report.rows] == [("e", 0.5), ("c", 0.3), ("b", 0.2)]
    assert report.other_usd == pytest.approx(0.16)
    assert report.total_usd == pytest.approx(1.16)  # rows + other = every charge
    # a value with a stored limit keeps its row whatever it spent
    ledger.set_limit(5, user="pinned")
    ledger.settle(ledger.reserve("job-p", 1, "acme", 1, user="pinned"), Decimal("0.001"))
    ledger.settle(ledger.reserve("job-f", 1, "acme", 1, user="f"), Decimal("0.9"))  # takes b's row, not pinned's
    assert rows(ledger, "user") == {"f": 0.9, "e": 0.5, "c": 0.3, "pinned": 0.001}
    top = ledger.report("user", top=2)
    assert [r.value for r in top.rows] == ["f", "e"] and top.other_usd == pytest.approx(1.16 + 0.901 - 1.4)


def test_a_tag_with_a_budget_from_the_config_keeps_its_row_too(make_ledger: Callable[..., Ledger]) -> None:
    """``[budget.tags]`` limits (the config's, not stored by ``llmq budget set``) pin their rows as
    stored ones do: a capped tag outside the top-K still has its row in ``llmq spend``."""
    ledger = make_ledger(report_rows={"tag": 2}, tag_limits_usd={"capped": 5})
    for i, (tag, usd) in enumerate([("a", "0.5"), ("b", "0.4"), ("capped", "0.01"), ("c", "0.9")]):
        ledger.settle(ledger.reserve(f"job-{i}", 1, "acme", 1, tags=[tag]), Decimal(usd))
    # capped (0.01, smallest) joined the full rows as a pinned value; c (0.9) took b's row, not capped's
    assert rows(ledger, "tag") == {"c": 0.9, "a": 0.5, "capped": 0.01}
    assert ledger.report("tag").other_usd == pytest.approx(0.4)


def test_the_report_by_days_and_by_month(make_ledger: Callable[..., Ledger]) -> None:
    clock = Clock(datetime(2026, 3, 30, 12, tzinfo=UTC))
    ledger = make_ledger(clock=clock)
    for day in range(5):  # Mar 30, 31, Apr 1, 2, 3: $1, $2, $3, $4, $5 on tag t
        ledger.settle(ledger.reserve(f"job-{day}", 1, "acme", 10, tags=["t"]), day + 1)
        clock.now += timedelta(days=1)
    clock.now -= timedelta(days=1)  # Apr 3
    assert rows(ledger, "tag", days=1) == {"t": 5.0}
    assert rows(ledger, "tag", days=3) == {"t": 12.0}
    assert rows(ledger, "tag", days=7) == {"t": 15.0}
    assert rows(ledger, "tag") == {"t": 12.0} and rows(ledger, "tag", month="2026-03") == {"t": 3.0}
    report = ledger.report("tag", days=3)
    assert (report.start, report.end) == ("2026-04-01", "2026-04-03")
    with pytest.raises(ValueError, match="days must be 1-120"):
        ledger.report("tag", days=121)


def test_a_redelivered_settle_counts_once_in_the_report(make_ledger: Callable[..., Ledger]) -> None:
    ledger = make_ledger()
    r = ledger.reserve("job-1", 1, "acme", 1, tags=["x"], model="m:1")
    assert ledger.settle(r, Decimal("0.2")).charged and not ledger.settle(r, Decimal("0.2")).charged
    assert rows(ledger, "tag") == {"x": 0.2} and rows(ledger, "model") == {"m:1": 0.2}

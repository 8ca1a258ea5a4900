"""The shared circuit breaker, against a real Redis with an injected clock."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis

from tests.support.doubles import FakeClock
from workers.guards.breaker import BreakerPolicy, CircuitBreaker, breaker_key
from workers.guards.ratelimit import GUARD_CHANNEL

MODEL = "anthropic:claude-sonnet-4-5"
POLICY = BreakerPolicy(failures=3, window_s=10.0, cooldown_s=5.0, probe_timeout_s=20.0)
COUNT_ONLY = BreakerPolicy(failures=3, window_s=10.0, cooldown_s=5.0, failure_ratio=None)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(2_000_000.0)


@pytest.fixture
def breaker(redis_client: redis.Redis, clock: FakeClock) -> CircuitBreaker:
    return CircuitBreaker(redis_client, clock=clock)


def _fail(breaker: CircuitBreaker, n: int = 1, probe: bool = False):
    state = None
    for _ in range(n):
        state = breaker.record(MODEL, POLICY, failed=True, probe=probe)
    return state


def test_opens_after_the_threshold_within_the_window(breaker: CircuitBreaker, clock: FakeClock) -> None:
    assert breaker.allow(MODEL, POLICY).kind == "closed"
    assert _fail(breaker, 2).state == "closed"
    opened = breaker.record(MODEL, POLICY, failed=True, why='{"t": "server_error"}')
    assert opened.state == "open" and opened.changed and opened.retry_in_s == 5.0
    permit = breaker.allow(MODEL, POLICY)
    assert permit.kind == "open" and not permit.go and permit.retry_in_s == 5.0
    assert permit.why == '{"t": "server_error"}' == breaker.state(MODEL).why  # what opened it


def test_a_busy_model_with_a_few_errors_stays_closed(breaker: CircuitBreaker) -> None:
    """Successes, counted by each process and reported with its next failure, keep the share low."""
    for _ in range(10):
        assert breaker.record(MODEL, POLICY, failed=True, successes=30).state == "closed"  # 10 of 310
    assert breaker.record(MODEL, COUNT_ONLY, failed=True).state == "open"  # the count alone would open


def test_it_opens_when_most_calls_fail(breaker: CircuitBreaker) -> None:
    assert breaker.record(MODEL, POLICY, failed=True, successes=2).state == "closed"
    assert _fail(breaker, 6).state == "closed"  # 7 failures of 9 calls: 78% < 80%
    assert _fail(breaker).state == "open"  # 8 of 10


def test_failures_older_than_the_window_do_not_count(breaker: CircuitBreaker, clock: FakeClock) -> None:
    _fail(breaker, 2)
    clock.now += 11  # the window is 10 s (slots of 1 s)
    assert _fail(breaker, 2).state == "closed"
    clock.now += 4
    assert _fail(breaker).state == "open"  # 3 failures within the last 10 s


def test_half_open_lets_exactly_one_probe_through(breaker: CircuitBreaker, clock: FakeClock) -> None:
    _fail(breaker, 3)
    clock.now += 5
    assert breaker.state(MODEL).state == "half_open"
    probe = breaker.allow(MODEL, POLICY)
    assert probe.kind == "probe" and probe.go
    busy = breaker.allow(MODEL, POLICY)
    assert busy.kind == "busy" and not busy.go and busy.retry_in_s == 20.0
    closed = breaker.record(MODEL, POLICY, failed=False, probe=True)
    assert closed.state == "closed" and closed.changed
    assert breaker.allow(MODEL, POLICY).kind == "closed"
    assert _fail(breaker, 2).state == "closed"  # the window starts afresh after closing


def test_a_failed_probe_reopens_for_a_new_cooldown(breaker: CircuitBreaker, clock: FakeClock) -> None:
    _fail(breaker, 3)
    clock.now += 6
    assert breaker.allow(MODEL, POLICY).kind == "probe"
    reopened = breaker.record(MODEL, POLICY, failed=True, probe=True)
    assert reopened.state == "open" and reopened.changed and reopened.retry_in_s == 5.0
    clock.now += 4.9
    assert breaker.allow(MODEL, POLICY).kind == "open"
    clock.now += 0.1
    assert breaker.allow(MODEL, POLICY).kind == "probe"


def test_a_lost_probe_is_replaced_after_its_lease_and_a_released_one_at_once(
    breaker: CircuitBreaker, clock: FakeClock
) -> None:
    _fail(breaker, 3)
    clock.now += 5
    first = breaker.allow(MODEL, POLICY)
    assert first.kind == "probe"
    clock.now += 19
    assert breaker.allow(MODEL, POLICY).kind == "busy"
    clock.now += 1  # the first probe's worker died: its lease ran out
    second = breaker.allow(MODEL, POLICY)
    assert second.kind == "probe"
    breaker.release(MODEL, first)  # a stale lease releases nothing
    assert breaker.allow(MODEL, POLICY).kind == "busy"
    breaker.release(MODEL, second)  # ended without a verdict (cancelled): someone else may probe
    assert breaker.allow(MODEL, POLICY).kind == "probe"


def test_late_results_while_open_are_not_counted(breaker: CircuitBreaker, clock: FakeClock) -> None:
    _fail(breaker, 3)
    late = _fail(breaker, 5)
    assert late.state == "open" and not late.changed
    clock.now += 5
    assert breaker.allow(MODEL, POLICY).kind == "probe"


def test_only_one_of_many_concurrent_callers_gets_the_probe(redis_client: redis.Redis, clock: FakeClock) -> None:
    breaker = CircuitBreaker(redis_client, clock=clock)
    _fail(breaker, 3)
    clock.now += 5
    barrier = threading.Barrier(24)

    def ask(_: int) -> str:
        barrier.wait()
        return breaker.allow(MODEL, POLICY).kind

    with ThreadPoolExecutor(24) as ex:
        kinds = list(ex.map(ask, range(24)))
    assert kinds.count("probe") == 1 and kinds.count("busy") == 23


def test_transitions_are_announced_with_versions(redis_client: redis.Redis, breaker: CircuitBreaker, clock) -> None:
    pubsub = redis_client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(GUARD_CHANNEL)
    pubsub.get_message(timeout=1)
    try:
        _fail(breaker, 3)
        clock.now += 5
        breaker.allow(MODEL, POLICY)
        breaker.record(MODEL, POLICY, failed=False, probe=True)
        messages = [json.loads(pubsub.get_message(timeout=2)["data"]) for _ in range(2)]
    finally:
        pubsub.close()
    assert messages == [
        {"k": "cb", "m": MODEL, "st": "open", "ms": 5000, "v": 1, "why": ""},
        {"k": "cb", "m": MODEL, "st": "closed", "ms": 0, "v": 2, "why": ""},
    ]
    assert redis_client.pttl(breaker_key(MODEL)) > 0  # state expires once idle


def test_policy_validates() -> None:
    with pytest.raises(ValueError):
        BreakerPolicy(failures=0)
    with pytest.raises(ValueError):
        BreakerPolicy(failure_ratio=1.5)

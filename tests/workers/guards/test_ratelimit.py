"""Shared RPM/TPM buckets and not-before times, against a real Redis (one clock for all callers)."""

from __future__ import annotations

import json
import random
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis

from tests.support.doubles import FakeClock
from workers.guards.ratelimit import GUARD_CHANNEL, RateLimiter, RateLimits, not_before_key, rate_keys

MODEL = "openai:gpt-4o"


def _limiter(client: redis.Redis, clock: FakeClock | None = None) -> RateLimiter:
    return RateLimiter(client, clock=clock)


def test_rpm_spaces_requests_evenly_and_reserves_in_order(redis_client: redis.Redis) -> None:
    clock = FakeClock()
    limiter = _limiter(redis_client, clock)
    limits = RateLimits(rpm=60)  # one request a second, burst 1
    waits = [limiter.acquire(MODEL, limits, 100, max_wait_s=10).wait_s for _ in range(4)]
    assert waits == [0.0, 1.0, 2.0, 3.0]  # each caller gets its own slot: no polling, no stampede
    assert limiter.acquire(MODEL, limits, 100, max_wait_s=10).reason == "rpm"
    clock.now += 10
    assert limiter.acquire(MODEL, limits, 100, max_wait_s=10).wait_s == 0.0


def test_a_wait_beyond_max_wait_is_refused_and_reserves_nothing(redis_client: redis.Redis) -> None:
    clock = FakeClock()
    limiter = _limiter(redis_client, clock)
    limits = RateLimits(rpm=6)  # one request per 10 s
    assert limiter.acquire(MODEL, limits, 1, max_wait_s=5).admitted
    refused = limiter.acquire(MODEL, limits, 1, max_wait_s=5)
    assert not refused.admitted and refused.wait_s == pytest.approx(10.0)
    again = limiter.acquire(MODEL, limits, 1, max_wait_s=5)
    assert not again.admitted and again.wait_s == pytest.approx(10.0)  # the refusal took no slot
    clock.now += 10
    assert limiter.acquire(MODEL, limits, 1, max_wait_s=0).admitted


def test_tpm_charges_prompt_plus_max_tokens_and_refuses_what_never_fits(redis_client: redis.Redis) -> None:
    clock = FakeClock()
    limiter = _limiter(redis_client, clock)
    limits = RateLimits(tpm=6000)  # 100 tokens a second, bucket of 6000
    assert limiter.acquire(MODEL, limits, 5000, max_wait_s=0).admitted
    short = limiter.acquire(MODEL, limits, 2000, max_wait_s=0)
    assert not short.admitted and short.reason == "tpm"
    assert short.wait_s == pytest.approx(10.0)  # 1000 tokens missing at 100/s
    too_big = limiter.acquire(MODEL, limits, 6001, max_wait_s=3600)
    assert too_big.too_large and not too_big.admitted


def test_rpm_and_tpm_together_take_the_later_slot(redis_client: redis.Redis) -> None:
    clock = FakeClock()
    limiter = _limiter(redis_client, clock)
    limits = RateLimits(rpm=600, tpm=600)  # 0.1 s per request, 10 tokens per second
    assert limiter.acquire(MODEL, limits, 600, max_wait_s=0).admitted
    grant = limiter.acquire(MODEL, limits, 10, max_wait_s=5)
    assert grant.admitted and grant.reason == "tpm" and grant.wait_s == pytest.approx(1.0)


@pytest.mark.parametrize("burst", [1, 3])
def test_many_threads_never_get_more_than_the_bucket(redis_client: redis.Redis, burst: int) -> None:
    """Contention from 32 threads (a frozen clock: no refill) admits exactly what the bucket holds."""
    clock = FakeClock()
    limits = RateLimits(rpm=60, rpm_burst=burst)
    pool = redis.Redis(connection_pool=redis_client.connection_pool)
    limiter = _limiter(pool, clock)
    barrier = threading.Barrier(32)

    def hit(_: int) -> list[float]:
        barrier.wait()
        grants = [limiter.acquire(MODEL, limits, 1, max_wait_s=4.5) for _ in range(5)]
        return [g.wait_s for g in grants if g.admitted]

    with ThreadPoolExecutor(32) as ex:
        admitted = sorted(w for ws in ex.map(hit, range(32)) for w in ws)
    # the burst now, then one slot per interval up to 4.5 s ahead, each given to exactly one caller
    interval = 60 / (60 - burst + 1)  # refilled so that no minute holds more than 60
    assert admitted == pytest.approx([0.0] * burst + [interval * k for k in range(1, 5)], abs=1e-5)


def test_random_arrivals_respect_burst_plus_rate_in_every_window(redis_client: redis.Redis) -> None:
    """The documented bound: at most burst + rate * t admissions in any t-second interval."""
    rng = random.Random(4)
    clock = FakeClock()
    limiter = _limiter(redis_client, clock)
    burst, rpm = 2, 120  # 2 per second
    limits = RateLimits(rpm=rpm, rpm_burst=burst)
    sends: list[float] = []
    for _ in range(400):
        clock.now += rng.expovariate(5.0)  # arrivals at ~5/s, far above the limit
        grant = limiter.acquire(MODEL, limits, 1, max_wait_s=rng.choice([0.0, 0.5, 3.0]))
        if grant.admitted:
            sends.append(clock.now + grant.wait_s)
    sends.sort()
    rate = rpm / 60
    for i, start in enumerate(sends):
        for t in (0.5, 1.0, 2.5, 10.0, 60.0):
            count = sum(1 for s in sends[i:] if s < start + t)
            assert count <= burst + rate * t + 1e-9, (start, t, count)
    assert len(sends) > 0.9 * rate * (sends[-1] - sends[0])  # and the limit is actually used


@pytest.mark.parametrize(("rpm", "burst"), [(60, 1), (1200, 2), (3000, 5)])
def test_no_minute_ever_holds_more_than_rpm_with_the_default_burst(
    redis_client: redis.Redis, rpm: int, burst: int
) -> None:
    """Worst case: a full bucket, and more than two minutes of demand offered at one instant."""
    limiter = _limiter(redis_client, FakeClock())
    limits = RateLimits(rpm=rpm)
    assert limits.script_args()[1] == burst  # 100 ms of requests, at least 1
    sends = []
    for _ in range(int(rpm * 2.2)):
        grant = limiter.acquire(MODEL, limits, 1, max_wait_s=600.0)
        assert grant.admitted
        sends.append(grant.wait_s)
    in_window = [sum(1 for t in sends[i:] if t < start + 60.0) for i, start in enumerate(sends[: len(sends) // 2])]
    assert max(in_window) == rpm  # reached, never exceeded
    assert sends[burst] > 0 and sends[burst - 1] == 0  # the burst goes at once, the rest is spaced


def test_not_before_holds_every_caller_and_never_shrinks(redis_client: redis.Redis) -> None:
    clock = FakeClock()
    limiter = _limiter(redis_client, clock)
    assert limiter.not_before(MODEL) == 0.0
    assert limiter.hold_off(MODEL, 3.0) == 3.0
    assert limiter.hold_off(MODEL, 1.0) == 3.0  # a shorter wait does not shorten it
    clock.now += 1
    assert limiter.not_before(MODEL) == pytest.approx(2.0)
    smooth = RateLimits(rpm=6000, rpm_burst=1)
    grant = limiter.acquire(MODEL, smooth, 1, max_wait_s=10)
    assert grant.admitted and grant.reason == "not_before" and grant.wait_s == pytest.approx(2.0)
    # the request reserved at the not-before time: the next one queues behind it
    assert limiter.acquire(MODEL, smooth, 1, max_wait_s=10).wait_s == pytest.approx(2.01)


def test_two_workers_share_one_redis_clock(redis_client: redis.Redis, redis_url: str) -> None:
    """No injected clock: the scripts use Redis TIME, so separate clients agree on the schedule."""
    other = redis.Redis.from_url(redis_url)
    try:
        a, b = RateLimiter(redis_client), RateLimiter(other)
        limits = RateLimits(rpm=1)  # one request a minute: the margins dwarf any delay between calls
        assert a.acquire(MODEL, limits, 1, max_wait_s=120).wait_s == 0.0
        second = b.acquire(MODEL, limits, 1, max_wait_s=120)
        assert second.admitted and 30 < second.wait_s <= 60  # b queues behind a's slot, on Redis's clock
        b.hold_off(MODEL, 120.0)
        assert 90 < a.not_before(MODEL) <= 120
    finally:
        other.close()


def test_keys_expire_once_idle(redis_client: redis.Redis) -> None:
    limiter = _limiter(redis_client)
    limiter.acquire(MODEL, RateLimits(rpm=60, tpm=6000), 100, max_wait_s=0)
    limiter.hold_off(MODEL, 2.0)
    rpm_key, tpm_key = rate_keys(MODEL)
    assert rpm_key == "llmq:rl:{openai:gpt-4o}:rpm"  # hash tag: one cluster slot per model
    assert 0 < redis_client.pttl(rpm_key) <= 1001
    assert 0 < redis_client.pttl(tpm_key) <= 1001
    assert 0 < redis_client.pttl(not_before_key(MODEL)) <= 2000


def test_hold_off_is_announced(redis_client: redis.Redis) -> None:
    pubsub = redis_client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(GUARD_CHANNEL)
    pubsub.get_message(timeout=1)
    try:
        _limiter(redis_client).hold_off(MODEL, 1.5)
        message = pubsub.get_message(timeout=2)
        assert message is not None
        assert json.loads(message["data"]) == {"k": "nb", "m": MODEL, "ms": 1500}
    finally:
        pubsub.close()


def test_limits_validate() -> None:
    with pytest.raises(ValueError):
        RateLimits(rpm=0)
    with pytest.raises(ValueError):
        RateLimits(rpm=10, rpm_burst=0)
    with pytest.raises(ValueError):
        RateLimits(rpm=10, rpm_burst=11)
    assert not RateLimits().active and RateLimits(tpm=5).script_args() == (0.0, 1, 12_000.0, 5)
    assert RateLimits(rpm=60).script_args()[:2] == (1000.0, 1)

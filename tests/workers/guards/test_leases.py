"""Rate-limit leases against a real Redis: fewer round trips, the same limits.

One fake clock drives both the scripts (Redis ``TIME`` replaced) and the leases' local expiry, so
"processes" (separate :class:`RateLeases` over separate clients) agree on time as real workers do.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest
import redis

from tests.support.doubles import FakeClock
from workers.guards.leases import RateLeases
from workers.guards.ratelimit import RateLimiter, RateLimits

MODEL = "openai:gpt-4o"


def _script_calls(client: redis.Redis) -> int:
    stats = client.info("commandstats")
    return sum(int(stats.get(name, {}).get("calls", 0)) for name in ("cmdstat_evalsha", "cmdstat_eval"))


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def two_clients(redis_url: str) -> Iterator[tuple[redis.Redis, redis.Redis]]:
    a, b = redis.Redis.from_url(redis_url), redis.Redis.from_url(redis_url)
    yield a, b
    a.close()
    b.close()


def _leases(client: redis.Redis, clock: FakeClock, **kwargs: int) -> RateLeases:
    return RateLeases(RateLimiter(client, clock=clock), local_clock=clock, **kwargs)


def test_a_lease_admits_the_next_requests_without_a_round_trip(redis_client: redis.Redis, clock: FakeClock) -> None:
    limits = RateLimits(rpm=600_000, tpm=100_000_000, lease_s=0.1)
    leases = _leases(redis_client, clock)
    leases.limiter.acquire("openai:warm-up", limits, 1, max_wait_s=0)  # loads the script
    redis_client.config_resetstat()
    for _ in range(1000):
        clock.now += 0.0002  # 5000 requests a second, far under the limit
        grant = leases.acquire(MODEL, limits, 50, max_wait_s=1.0, gate_open=True)
        assert grant.admitted and grant.wait_s == 0
    calls = _script_calls(redis_client)
    assert calls == leases.stats.calls
    assert leases.stats.local + leases.stats.calls == 1000
    # sizes double 1, 2, 4, ... until a lease lasts its 100 ms (~500 requests here)
    assert calls <= 15, calls


def test_low_rpm_limits_are_never_leased(redis_client: redis.Redis, clock: FakeClock) -> None:
    limits = RateLimits(rpm=600, lease_s=0.1)  # 10 a second: a lease would be a large share
    assert not limits.leased and limits.lease_slots() == 0
    leases = _leases(redis_client, clock)
    for _ in range(5):
        clock.now += 1.0
        assert leases.acquire(MODEL, limits, 1, max_wait_s=0, gate_open=True).admitted
    assert leases.stats.calls == 5 and leases.stats.local == 0
    assert not RateLimits(rpm=60_000).leased  # lease_s = 0: off


def test_the_refill_leaves_room_for_lease_delays() -> None:
    plain, leased = RateLimits(rpm=1200), RateLimits(rpm=1200, lease_s=0.1)
    assert leased.lease_slots() == 2  # 100 ms of 20 requests a second
    assert plain.script_args()[0] == pytest.approx(60_000 / 1199)  # rpm - burst(2) + 1
    assert leased.script_args()[0] == pytest.approx(60_000 / 1197)
    with pytest.raises(ValueError, match="no refill"):
        RateLimits(rpm=1200, rpm_burst=1200, lease_s=0.1)


def _busiest_minute(procs: list[RateLeases], clock: FakeClock, limits: RateLimits, seed: int) -> int:
    """Demand at ~1.6x the limit in bursts and lulls, from several processes, some callers willing
    to wait; every send (leased or not) is recorded when it goes out. Returns the most sends any
    60-second window holds."""
    rng = random.Random(seed)
    rate = (limits.rpm or 0) / 60.0
    sends: list[float] = []
    end = clock.now + 100.0
    while clock.now < end:
        # lulls let the buckets fill, so leases get taken and then used late in their life
        busy = int(clock.now) % 7 < 4
        clock.now += rng.expovariate(rate * (2.6 if busy else 0.3))
        grant = rng.choice(procs).acquire(MODEL, limits, 1, max_wait_s=rng.choice([0.0, 0.0, 0.2, 2.0]), gate_open=True)
        if grant.admitted:
            sends.append(clock.now + grant.wait_s)
    sends.sort()
    worst = j = 0
    for i, start in enumerate(sends):
        while j < len(sends) and sends[j] < start + 60.0:
            j += 1
        worst = max(worst, j - i)
    return worst


@pytest.mark.parametrize(("rpm", "seed"), [(1200, 1), (3000, 2), (6000, 3)])
def test_two_processes_with_leases_never_exceed_rpm_in_any_minute(
    two_clients: tuple[redis.Redis, redis.Redis], redis_client: redis.Redis, rpm: int, seed: int
) -> None:
    clock = FakeClock()  # one clock for both "processes" and the scripts
    procs = [_leases(client, clock) for client in two_clients]
    leased = _busiest_minute(procs, clock, RateLimits(rpm=rpm, lease_s=0.1), seed)
    local = sum(p.stats.local for p in procs)
    assert leased <= rpm, (leased, rpm)
    assert local > 0  # leases did serve sends
    # the same demand without leases: leasing costs at most its documented share of the limit
    redis_client.flushdb()
    clock.now = 1_000_000.0
    plain = _busiest_minute(procs, clock, RateLimits(rpm=rpm), seed)
    assert plain <= rpm
    assert leased >= plain - RateLimits(rpm=rpm, lease_s=0.1).lease_slots() - 0.01 * rpm, (leased, plain)


def test_unused_tpm_tokens_are_given_back_with_the_next_call(redis_client: redis.Redis, clock: FakeClock) -> None:
    limits = RateLimits(tpm=60_000, lease_s=0.1)  # 1000 tokens a second, a bucket of 60 000
    leases = _leases(redis_client, clock)
    other = RateLimiter(redis_client, clock=clock)
    # ramp the lease size up
    for _ in range(6):
        clock.now += 0.01
        leases.acquire(MODEL, limits, 1000, max_wait_s=0, gate_open=True)
    assert leases.stats.local > 0
    clock.now += 0.2  # the lease expires with tokens left
    assert leases.acquire(MODEL, limits, 1000, max_wait_s=0, gate_open=True).admitted
    used = 1000 * (6 + 1)
    # what is still in the bucket = 60 000 - tokens used - the new lease's tokens (if any);
    # with the leftover given back, another process can take all of it now
    held = leases.held(MODEL)[1]  # the lease just taken
    free = 60_000 - used - held + int(0.25 * 1000)  # + refill over the fake 0.26 s
    assert other.acquire(MODEL, limits, free - 10, max_wait_s=0).admitted


def test_a_pending_not_before_time_goes_to_redis_and_is_obeyed(redis_client: redis.Redis, clock: FakeClock) -> None:
    limits = RateLimits(rpm=60_000, lease_s=0.1)
    leases = _leases(redis_client, clock)
    for _ in range(4):
        leases.acquire(MODEL, limits, 1, max_wait_s=0, gate_open=True)
    assert leases.held(MODEL)[0] > 0  # a lease is held
    leases.limiter.hold_off(MODEL, 2.0)
    grant = leases.acquire(MODEL, limits, 1, max_wait_s=5, gate_open=False)
    assert grant.admitted and grant.reason == "not_before" and grant.wait_s == pytest.approx(2.0)
    assert leases.held(MODEL)[0] == 0  # the lease was dropped, not used early


def test_a_lease_shrinks_when_most_of_it_expires_unused(redis_client: redis.Redis, clock: FakeClock) -> None:
    limits = RateLimits(rpm=60_000, lease_s=0.1)
    leases = _leases(redis_client, clock)
    for _ in range(200):  # a burst: the size grows
        leases.acquire(MODEL, limits, 1, max_wait_s=0, gate_open=True)
    grown = leases.held(MODEL)[2]
    assert grown >= 64
    for _ in range(4):  # then one request per second: each lease expires nearly untouched
        clock.now += 1.0
        leases.acquire(MODEL, limits, 1, max_wait_s=0, gate_open=True)
    assert leases.held(MODEL)[2] <= grown // 8

"""Ledger writes that matter for money wait for a replica (``WAIT``): a real ``redis-server`` master
and a real replica. With the replica up, WAIT returns 1 and the replica holds the settlement when
the call returns; with it stopped, WAIT times out, the write is counted as short, and the
reservation and settlement still succeed on the master."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from decimal import Decimal

import pytest
import redis
from prometheus_client import CollectorRegistry

from llmq.localredis import ManagedRedis
from tests.support.waits import until
from workers.accounting.ledger import GLOBAL_SCOPE, Ledger, ReplicaWait
from workers.routes import load_config
from workers.runtime.resources import build_ledger
from workers.runtime.telemetry import ReplicaWaitCollector
from workers.settings import Settings

#: Bound on waiting for the replica to attach (a hang guard, not a timing assertion).
ATTACH_GUARD_S = 30


def _attached(master: redis.Redis, replica: redis.Redis) -> bool:
    try:
        link = replica.info("replication").get("master_link_status")
        return link == "up" and int(master.info("replication")["connected_slaves"]) >= 1
    except redis.RedisError:
        return False


@pytest.fixture
def pair() -> Iterator[tuple[ManagedRedis, ManagedRedis]]:
    master = ManagedRedis(durable=True).start()
    replica = ManagedRedis(durable=True, extra_args=["--replicaof", "127.0.0.1", str(master.port)]).start()
    try:
        until(
            lambda: _attached(redis.Redis(port=master.port), redis.Redis(port=replica.port)),
            "the replica",
            guard_s=ATTACH_GUARD_S,
        )
        yield master, replica
    finally:
        replica.stop()
        master.stop()


def _spent(ledger: Ledger) -> float:
    return next(s.spent_usd for s in ledger.show().scopes if s.scope == GLOBAL_SCOPE)


def test_settle_waits_for_the_replica_and_counts_when_it_is_gone(
    pair: tuple[ManagedRedis, ManagedRedis], caplog: pytest.LogCaptureFixture
) -> None:
    master, replica = pair
    # up: WAIT returns as soon as the replica has the write (a loaded machine can take longer than
    # 200 ms to ship it: seen once in CI); gone: the short timeout below, so the test stays quick
    wait = ReplicaWait(1, timeout_ms=30_000)
    registry = CollectorRegistry()
    registry.register(ReplicaWaitCollector(wait))
    ledger = Ledger(redis.Redis(port=master.port), monthly_limit_usd=10, replica_wait=wait)
    on_replica = Ledger(redis.Redis(port=replica.port), monthly_limit_usd=10)

    # the replica is up: WAIT returns 1, and the replica holds the write when settle returns
    reservation = ledger.reserve("job-1", 1, "acme", Decimal("0.5"))
    settlement = ledger.settle(reservation, Decimal("0.25"))
    assert settlement.charged
    assert (wait.acked, wait.short) == (2, 0)
    assert _spent(on_replica) == 0.25  # read from the replica itself: no polling needed
    assert redis.Redis(port=master.port).wait(1, 30_000) == 1  # what the ledger's WAIT saw

    # the replica is gone: WAIT times out with 0; counted and logged, the money is still accounted
    replica.stop()
    wait.timeout_ms = 200
    with caplog.at_level(logging.WARNING, logger="llmq.ledger"):
        reservation = ledger.reserve("job-2", 1, "acme", Decimal("0.5"))
        settlement = ledger.settle(reservation, Decimal("0.125"))
    assert settlement.charged and settlement.amount_micros == 125_000
    assert (wait.acked, wait.short) == (2, 2)
    assert _spent(ledger) == 0.375
    messages = [r.getMessage() for r in caplog.records if r.name == "llmq.ledger"]
    assert len(messages) == 2 and all("reached 0 of 1 replicas" in m for m in messages)
    assert "settle of job-2#1" in messages[1]
    assert registry.get_sample_value("llmq_ledger_replica_waits_total", {"outcome": "acked"}) == 2
    assert registry.get_sample_value("llmq_ledger_replica_waits_total", {"outcome": "short"}) == 2

    # a duplicate settle is still a no-op under WAIT (idempotency is the script's, not the wait's)
    assert not ledger.settle(reservation, Decimal("0.125")).charged
    assert _spent(ledger) == 0.375


def test_a_master_without_the_scripts_loads_them_and_still_waits(pair: tuple[ManagedRedis, ManagedRedis]) -> None:
    master, replica = pair
    wait = ReplicaWait(1, timeout_ms=30_000)  # the replica is up: WAIT returns as soon as it has the write
    client = redis.Redis(port=master.port)
    ledger = Ledger(client, replica_wait=wait)
    client.script_flush()  # as after a fail-over to a master that never ran them
    reservation = ledger.reserve("job-3", 1, "acme", Decimal("0.5"))
    client.script_flush()
    assert ledger.settle(reservation, Decimal("0.5")).charged
    assert (wait.acked, wait.short) == (2, 0)
    assert _spent(Ledger(redis.Redis(port=replica.port))) == 0.5


def test_the_worker_ledger_waits_under_sentinel_or_when_asked() -> None:
    config = load_config(None)
    never = redis.Redis(port=1)  # scripts are registered, not sent: nothing connects
    sentinel = Settings(redis_url="sentinel://127.0.0.1:1;sentinel://127.0.0.1:2/0")
    plain = Settings(redis_url="redis://127.0.0.1:1/0")
    waiting = build_ledger(sentinel, config, never).replica_wait
    assert waiting is not None and (waiting.replicas, waiting.timeout_ms) == (1, 250)
    assert build_ledger(plain, config, never).replica_wait is None
    asked = build_ledger(plain.model_copy(update={"ledger_wait_replicas": 2, "ledger_wait_ms": 50}), config, never)
    assert asked.replica_wait is not None and (asked.replica_wait.replicas, asked.replica_wait.timeout_ms) == (2, 50)
    off = build_ledger(sentinel.model_copy(update={"ledger_wait_replicas": 0}), config, never)
    assert off.replica_wait is None
    with pytest.raises(ValueError, match="at least one replica"):
        ReplicaWait(0, 100)

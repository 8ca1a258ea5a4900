"""The schedule keeps every reliability guarantee: a SIGKILLed worker, a Redis restart, two workers.

Real processes: a durable ``redis-server`` (AOF, as shipped), two ``llmq worker`` processes sharing
one schedule (one gevent, one threads), the simulator, a producer, and a routes file with weights,
a tenant cap and concurrency keys. Mid-run one worker is SIGKILLed while it holds scheduled jobs and
Redis is killed and restarted; a third worker takes the first one's place. Asserted: every job ends
exactly once (one terminal event, one stored result), the cap held throughout, and the schedule is
empty and consistent at the end (no slot left held, nothing parked, no tenant blocked).

The cap is checked where it shows: the slots the schedule holds for the tenant (sampled every 50 ms,
one read each), and the tenant's calls in flight at the provider (from the simulator's record of
every request's start and end, one clock, ordered, not timed). A job's ``running`` state is not that
measure here: the killed worker's jobs keep it, with no slot and no call, until their next run.
A death in the instant between the fetch and the delivery is ``tests/integration/test_fetch_window.py``
(that fetch is this scheduler's).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import redis

from llmq.devstack import LocalStack
from llmq.localredis import ManagedRedis
from producers import Client
from tests.support.brokers import queued_count
from tests.support.waits import until
from workers.connections.schedule import HELD_KEY, queue_prefix
from workers.contract import TERMINAL_EVENT_TYPES, JobKeys

pytestmark = pytest.mark.slow

MODEL = "openai:gpt-4o-mini"
P = queue_prefix("llmq")
HANG_GUARD_S = 300
CONFIG = """
[scheduling]
weights = { interactive = 8, normal = 4, bulk = 1 }

[tenants.capped]
max_concurrency = 3

[tenants.big]
weight = 3
"""
#: tenant, class, concurrency key, how many
PLAN = [
    ("capped", "normal", None, 18),
    ("big", "bulk", None, 24),
    ("small", "bulk", None, 12),
    ("web", "interactive", None, 12),
    ("docs", "normal", "doc-1", 6),
    ("docs", "normal", None, 6),
]


def test_a_killed_worker_a_redis_restart_and_two_workers_end_every_job_exactly_once(tmp_path: Path) -> None:
    server = ManagedRedis(durable=True)
    server.start()
    url = server.url
    config = tmp_path / "llmq.toml"
    config.write_text(CONFIG)
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMQ_")}
    # a dead worker's jobs move, and its claims lapse, after 5 s (not the defaults' 15 s: a shorter test)
    env.update({"LLMQ_REDIS_URL": url, "LLMQ_CONFIG": str(config)})
    env.update({"LLMQ_VISIBILITY_TIMEOUT": "5", "LLMQ_CLAIM_LEASE_S": "5"})
    capped_running: list[int] = []
    stop = threading.Event()
    try:
        with LocalStack(env=env) as stack, Client(url) as client:
            stack.start_redis()  # adopts ours
            stack.start_simulator(tokens_per_s=10)  # 20 tokens in ~2 s
            victim = stack.start_worker(pool="threads", concurrency=6, name="w1")
            stack.start_worker(pool="gevent", concurrency=6, name="w2")
            stack.wait_for_workers(2)
            ids: list[str] = []
            for tenant, priority, key, count in PLAN:
                for n in range(count):
                    job_id = f"{tenant}-{key or 'nokey'}-{n}"
                    job = {"id": job_id, "model": MODEL, "messages": [{"role": "user", "content": job_id}]}
                    job |= {"max_tokens": 20, "tenant": tenant, "priority": priority}
                    client.submit(job | ({"concurrency_key": key} if key else {}))
                    ids.append(job_id)

            def sample() -> None:
                probe = redis.Redis.from_url(url, socket_timeout=2)
                while not stop.is_set():
                    with contextlib.suppress(redis.RedisError):  # Redis restarting
                        capped_running.append(int(probe.scard(f"{P}run:t:capped")))
                    stop.wait(0.05)
                probe.close()

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()

            # SIGKILL w1 while it holds scheduled jobs
            until(lambda: _held_by_anyone(url) >= 8, "both workers to hold jobs", HANG_GUARD_S)
            os.killpg(victim.pid, signal.SIGKILL)
            victim.wait(30)
            stack.start_worker(pool="threads", concurrency=6, name="w3")
            # then kill Redis mid-run and bring it back (the AOF has every script's effect, whole)
            until(lambda: _done(url, ids) >= 20, "some jobs to finish", HANG_GUARD_S)
            server.kill()
            time.sleep(1.0)  # down for a moment (any length would do)
            server.start()

            for job_id in ids:
                result = client.result(job_id, timeout=HANG_GUARD_S)
                assert result.status == "succeeded", (job_id, result.error)
                events = list(client.stream(job_id, timeout=30))
                terminal = [e for e in events if e.type in TERMINAL_EVENT_TYPES]
                assert len(terminal) == 1 and events[-1] is terminal[0], (job_id, [e.type for e in events])
            stop.set()
            sampler.join(10)
            r = redis.Redis.from_url(url)
            until(lambda: r.hlen(HELD_KEY) == 0, "every held slot to be released (acks flushed)", 60)
            assert queued_count(r, "llmq") == 0
            assert not r.keys(f"{P}run:*") and not r.keys(f"{P}park:*") and not r.keys(f"{P}blk:*")
            assert Counter(int(v) for v in r.hvals(f"{P}parked")) <= Counter({0: len(PLAN)})
            r.close()
            in_flight = _most_in_flight(_requests(stack.simulator_url), "capped-")
    finally:
        stop.set()
        server.stop()
    print(f"{len(capped_running)} samples of the capped tenant's slots, most held {max(capped_running)}; ")
    print(f"most of its calls in flight at once {in_flight}")
    assert capped_running and max(capped_running) <= 3
    assert in_flight == 3  # never more, and it did use its 3


def _requests(simulator_url: str | None) -> list[dict[str, Any]]:
    assert simulator_url
    with urllib.request.urlopen(f"{simulator_url}/_sim/requests", timeout=30) as reply:
        return list(json.load(reply))


def _most_in_flight(records: list[dict[str, Any]], prefix: str) -> int:
    """The most requests of jobs named ``prefix...`` open at once (an end before a start at one instant)."""
    edges: list[tuple[float, int]] = []
    for record in records:
        if str(record["job"]).startswith(prefix):
            ended = record["ended"]
            edges += [(float(record["started"]), 1), (float("inf") if ended is None else float(ended), -1)]
    most = now = 0
    for _, step in sorted(edges):
        now += step
        most = max(most, now)
    return most


def _held_by_anyone(url: str) -> int:
    r = redis.Redis.from_url(url)
    try:
        return int(r.hlen(HELD_KEY))
    finally:
        r.close()


def _done(url: str, ids: list[str]) -> int:
    r = redis.Redis.from_url(url)
    try:
        return sum(1 for found in r.mget([JobKeys(j).result for j in ids]) if found)
    finally:
        r.close()

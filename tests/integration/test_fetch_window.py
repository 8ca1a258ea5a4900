"""The instant between the broker taking a message and the worker holding it (issue #12).

kombu's BRPOP removed a message from its queue before anything recorded it as held: a worker killed
there, or a Redis that died there, lost the job. The worker's fetch (workers/runtime/broker.py) now
takes and records in one Lua script. A real worker process stops exactly at that instant (the
channel's ``on_fetched`` seam, tests/support/fetch_seam.py) and there either SIGKILLs itself or
SIGKILLs the durable Redis (AOF, as shipped); the job must still end exactly once, charged once.
No timing is asserted: the waits are hang guards.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import redis

from llmq.devstack import LocalStack
from llmq.localredis import ManagedRedis
from producers import Client
from tests.support.brokers import queued_count
from tests.support.spend import global_spent_usd, one_call_usd
from tests.support.waits import until
from workers.contract import DEFAULT_QUEUE, TERMINAL_EVENT_TYPES

pytestmark = pytest.mark.slow

MODEL = "openai:gpt-4o-mini"
PROMPT = [{"role": "user", "content": "survive a crash"}]
HANG_GUARD_S = 180


@pytest.mark.parametrize("mode", ["kill-worker", "kill-redis"])
def test_a_death_right_after_the_fetch_loses_no_job(mode: str, tmp_path: Path) -> None:
    server = ManagedRedis(durable=True)
    server.start()
    assert server.process is not None
    url = server.url
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMQ_")}
    # a short visibility timeout only makes the orphaned entry age sooner; any value would do
    env.update({"LLMQ_REDIS_URL": url, "LLMQ_MONTHLY_BUDGET_USD": "10", "LLMQ_VISIBILITY_TIMEOUT": "5"})
    r = redis.Redis.from_url(url)
    gate = tmp_path / "go"
    try:
        with LocalStack(env=env) as stack, Client(url) as client:
            stack.start_redis()  # adopts ours
            stack.start_simulator(tokens_per_s=20)
            argv = [sys.executable, "-m", "tests.support.fetch_seam", mode, "--hostname", "seam@%h"]
            seam_env = {"LLMQ_TEST_REDIS_PID": str(server.process.pid), "LLMQ_TEST_SEAM_GATE": str(gate)}
            seam = stack._spawn("seam", argv, {**stack.provider_env(), **seam_env})
            stack.wait_for_workers(1, timeout=60)
            client.submit({"model": MODEL, "messages": PROMPT, "max_tokens": 20, "id": "seam-1"})
            gate.touch()  # the submit is complete: the seam may strike

            if mode == "kill-worker":
                assert seam.wait(HANG_GUARD_S) == -9  # killed itself at the seam
                # the instant after the script: recorded as held (by nobody), not queued
                assert queued_count(r, DEFAULT_QUEUE) == 0 and r.hlen("unacked") == 1 and r.zcard("unacked_index") == 1
                stack.start_worker(pool="threads", concurrency=2, name="w2")  # restores it once it ages
            else:
                server.process.wait(HANG_GUARD_S)  # killed by the worker at the seam
                server.process = None
                server.start()  # same port, same AOF
                assert queued_count(r, DEFAULT_QUEUE) + r.hlen("unacked") == 1  # queued or held: never neither

            result = client.result("seam-1", timeout=HANG_GUARD_S)
            assert result.status == "succeeded"
            events = list(client.stream("seam-1", timeout=30))
            terminal = [e for e in events if e.type in TERMINAL_EVENT_TYPES]
            assert len(terminal) == 1 and events[-1] is terminal[0], [e.type for e in events]
            until(
                lambda: r.hlen("unacked") == 0 and queued_count(r, DEFAULT_QUEUE) == 0,
                "the ack",
                HANG_GUARD_S,
                poll_s=0.1,
                tolerate=(redis.RedisError,),
            )
            assert global_spent_usd(url) == pytest.approx(one_call_usd(MODEL, PROMPT, 20))  # charged once
            if mode == "kill-redis":
                assert seam.poll() is None  # the worker rode out the restart itself
    finally:
        r.close()
        server.stop()

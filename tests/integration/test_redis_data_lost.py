"""A running job whose records vanish from Redis (a Redis restarted without persistence, or flushed):
the worker says that Redis lost the job, not that another run took it, and stays up.

In-process worker, the paced simulator, the test Redis; the job's keys are deleted while it streams.
"""

from __future__ import annotations

import logging

import pytest

from producers import Client
from simulator.app import SimulatorThread
from tests.support.waits import until
from workers.contract import JobKeys

JOB = {"model": "openai:gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}]}


def test_a_run_whose_records_are_gone_says_redis_lost_them(
    worker: object, client: Client, simulator: SimulatorThread, caplog: pytest.LogCaptureFixture
) -> None:
    simulator.simulator.config.tokens_per_s = 10  # the job streams for seconds
    simulator.simulator.config.completion_tokens = 200
    caplog.set_level(logging.WARNING, logger="llmq")
    handle = client.submit({**JOB, "id": "data-lost-1"})
    keys = JobKeys(handle.id)
    until(lambda: client.redis.xlen(keys.events) >= 3, "the job to stream", 60)
    doomed = list(client.redis.scan_iter(match=f"llmq:job:{{{handle.id}}}:*"))
    assert keys.claim in {k.decode() for k in doomed} and keys.meta in {k.decode() for k in doomed}
    client.redis.delete(*doomed)  # what a restart without persistence leaves of it

    def said() -> list[str]:
        return [r.getMessage() for r in caplog.records if handle.id in r.getMessage() and r.levelno == logging.ERROR]

    until(said, "the worker to say what happened", 60)
    (line,) = said()
    assert "gone from Redis, not taken by another run" in line and "appendonly yes" in line
    assert not any("moved to another run" in r.getMessage() for r in caplog.records if handle.id in r.getMessage())
    # the worker goes on: the next job runs
    simulator.simulator.config.completion_tokens = 5
    assert client.submit({**JOB, "id": "data-lost-2"}).result(timeout=60).status == "succeeded"

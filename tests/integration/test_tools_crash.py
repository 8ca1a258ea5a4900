"""A worker SIGKILLed inside a tool loop: the redelivered job resumes from the journal.

Subprocess workers (``llmq worker``) with the test tool module; the tools count their runs in
Redis, outside the worker that dies.
"""

from __future__ import annotations

import json
import os
import signal
import urllib.request
from pathlib import Path

import pytest
import redis

from llmq.devstack import LocalStack
from producers import Client
from tests.support.tools import STARTED_KEY, VISITS_KEY
from tests.support.waits import until
from workers.accounting.ledger import GLOBAL_SCOPE, Ledger

pytestmark = pytest.mark.slow

ROOT = str(Path(__file__).parents[2])
PROMPT = [{"role": "user", "content": "plan a visit"}]
FAST = {
    "LLMQ_VISIBILITY_TIMEOUT": "3",  # redelivery soon after the crash (production: 3600)
    "LLMQ_CLAIM_LEASE_S": "2",
    "LLMQ_TASK_TIME_LIMIT": "10",  # also the ledger's reservation lease
    "LLMQ_MONTHLY_BUDGET_USD": "10",
    "LLMQ_TOOLS": "tests.support.tools",
}


def _scope(ledger: Ledger) -> tuple[float, float]:
    status = next(s for s in ledger.show().scopes if s.scope == GLOBAL_SCOPE)
    return status.spent_usd, status.reserved_usd


def _sim_requests(stack: LocalStack, job_id: str) -> list[dict[str, object]]:
    with urllib.request.urlopen(f"{stack.simulator_url}/_sim/requests?job={job_id}", timeout=5) as reply:
        records: list[dict[str, object]] = json.loads(reply.read())
    return records


def _stack(url: str) -> LocalStack:
    env = {**os.environ, "LLMQ_REDIS_URL": url, "PYTHONPATH": ROOT, **FAST}
    return LocalStack(env=env)


def test_sigkill_after_a_tool_ran_resumes_without_repeating_it(redis_server_url: str) -> None:
    url = redis_server_url.replace("/0", "/6")
    data = redis.Redis.from_url(url)
    data.flushdb()
    with _stack(url) as stack, Client(url) as client:
        stack.start_redis()
        stack.start_simulator(latency=0.5, tokens_per_s=2)  # turn 2's answer takes seconds
        victim = stack.start_worker(pool="threads", concurrency=4, name="victim")
        stack.wait_for_workers(1)
        ledger = Ledger(redis.Redis.from_url(url), monthly_limit_usd=10)

        job = {"model": "openai:gpt-4o-mini~tools", "messages": PROMPT, "tools": ["count_visit"], "id": "crash-tools"}
        handle = client.submit({**job, "max_tokens": 50})
        for event in handle.stream(timeout=60):
            if event.type == "tool_result":
                break
        os.killpg(victim.pid, signal.SIGKILL)  # turn 1 and its tool are journaled; turn 2 is not
        victim.wait(10)
        assert int(data.get(VISITS_KEY) or 0) == 1

        stack.start_worker(pool="threads", concurrency=4, name="rescuer")
        result = client.result("crash-tools", timeout=90)
        assert result.status == "succeeded", result.error
        assert result.turns == 2
        assert "[1] visit 1 to museum" in result.content  # the journaled result reached turn 2
        assert int(data.get(VISITS_KEY) or 0) == 1  # the tool ran exactly once
        events = list(client.stream("crash-tools", timeout=5))
        assert {e.run for e in events} == {1, 2}
        assert [e.run for e in events if e.type == "tool_call"] == [1]  # run 2 did not call it again
        assert sum(1 for r in _sim_requests(stack, "crash-tools") if r["fault"] == "tools") == 1  # turn 1: once

        # the dead run's turn-2 reservation expires by itself; each turn is charged exactly once
        until(lambda: _scope(ledger)[1] == 0, "the abandoned reservation to expire", 30)
        spent, _ = _scope(ledger)
        assert result.cost_usd is not None and result.cost_usd > 0
        assert spent == pytest.approx(result.cost_usd, abs=2e-6)
        assert sorted({a.turn for a in result.attempts}) == [1, 2]
        ledger.client.close()
    data.close()


@pytest.mark.parametrize(("tool", "db"), [("slow_visit", 7), ("slow_visit_idempotent", 8)])
def test_a_call_interrupted_by_a_crash_runs_again_only_if_idempotent(redis_server_url: str, tool: str, db: int) -> None:
    url = redis_server_url.replace("/0", f"/{db}")
    data = redis.Redis.from_url(url)
    data.flushdb()
    with _stack(url) as stack, Client(url) as client:
        stack.start_redis()
        stack.start_simulator()
        victim = stack.start_worker(pool="threads", concurrency=4, name="victim")
        stack.wait_for_workers(1)
        job = {"model": "openai:gpt-4o-mini~tools", "messages": PROMPT, "tools": [tool], "id": "crash-slow"}
        client.submit(job)
        until(lambda: int(data.get(STARTED_KEY) or 0) == 1, "the tool to start", 60)
        os.killpg(victim.pid, signal.SIGKILL)
        victim.wait(10)

        stack.start_worker(pool="threads", concurrency=4, name="rescuer")
        result = client.result("crash-slow", timeout=90)
        if tool == "slow_visit":
            assert result.status == "failed"
            assert result.error is not None and result.error.type == "tool_interrupted"
            assert "slow_visit" in result.error.message and "not idempotent" in result.error.message
            assert int(data.get(STARTED_KEY) or 0) == 1  # never started again
        else:
            assert result.status == "succeeded", result.error
            assert int(data.get(STARTED_KEY) or 0) == 2  # an idempotent tool is simply run again
            assert "[1] visited park (start 2)" in result.content
    data.close()

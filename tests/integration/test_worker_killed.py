"""A worker SIGKILLed mid-job: the job is redelivered, runs again, and is charged exactly once."""

from __future__ import annotations

import os
import signal
import time

import pytest
import redis

from llmq.devstack import LocalStack
from producers import Client
from workers.accounting.ledger import GLOBAL_SCOPE, Ledger, to_micros
from workers.accounting.prices import PriceBook
from workers.accounting.tokens import TokenCounter
from workers.contract import Message, Usage

pytestmark = pytest.mark.slow

MODEL = "openai:gpt-4o-mini"
PROMPT = [{"role": "user", "content": "survive a crash"}]


def _scope(ledger: Ledger) -> tuple[float, float]:
    status = next(s for s in ledger.show().scopes if s.scope == GLOBAL_SCOPE)
    return status.spent_usd, status.reserved_usd


def _wait(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_sigkill_mid_job_redelivers_and_charges_once(redis_server_url: str) -> None:
    url = redis_server_url.replace("/0", "/5")
    redis.Redis.from_url(url).flushdb()
    fast = {
        "LLMQ_VISIBILITY_TIMEOUT": "3",  # redelivery soon after the crash (production: 3600)
        "LLMQ_CLAIM_LEASE_S": "2",
        "LLMQ_TASK_TIME_LIMIT": "10",  # also the ledger's reservation lease
        "LLMQ_MONTHLY_BUDGET_USD": "10",
    }
    with LocalStack(env={**os.environ, "LLMQ_REDIS_URL": url, **fast}) as stack, Client(url) as client:
        stack.start_redis()
        stack.start_simulator(tokens_per_s=4)  # 20 tokens over ~5 s
        first = stack.start_worker(pool="threads", concurrency=4, name="victim")
        stack.wait_for_workers(1)
        ledger = Ledger(redis.Redis.from_url(url), monthly_limit_usd=10)

        handle = client.submit({"model": MODEL, "messages": PROMPT, "max_tokens": 20, "id": "crash-1"})
        for event in handle.stream(timeout=30):
            if event.type == "delta":
                break
        assert _scope(ledger)[1] > 0  # the worst case is reserved while the call runs
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(10)

        # nobody settles the dead worker's reservation: its lease runs out by itself
        _wait(lambda: _scope(ledger)[1] == 0, 30, "the abandoned reservation to expire")
        assert _scope(ledger)[0] == 0

        stack.start_worker(pool="threads", concurrency=4, name="rescuer")
        result = client.result("crash-1", timeout=60)
        assert result.status == "succeeded"
        runs = {e.run for e in client.stream("crash-1", timeout=5)}
        assert runs == {1, 2}  # consumers can see the job ran again

        prompt = TokenCounter().count(MODEL, [Message(**PROMPT[0])]).tokens
        one_call = PriceBook().lookup(MODEL).cost(Usage(prompt_tokens=prompt, completion_tokens=20))
        spent, reserved = _scope(ledger)
        assert reserved == 0
        assert spent == pytest.approx(to_micros(one_call) / 1e6)  # charged exactly once
        ledger.client.close()

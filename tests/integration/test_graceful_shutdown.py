"""SIGTERM on a worker process: it stops taking jobs, lets running streams finish within the
soft-shutdown window, and hands back what it cannot finish (nothing lost, nothing run twice at once)."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator

import pytest
import redis

from llmq.devstack import LocalStack
from producers import Client
from workers.contract import TERMINAL_EVENT_TYPES

pytestmark = pytest.mark.slow

MODEL = "openai:gpt-4o-mini"
PROMPT = [{"role": "user", "content": "finish before you go"}]
HANG_GUARD_S = 180


@pytest.fixture
def stack(redis_server_url: str) -> Iterator[LocalStack]:
    url = redis_server_url.replace("/0", "/6")
    redis.Redis.from_url(url).flushdb()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMQ_")}
    env["LLMQ_REDIS_URL"] = url
    with LocalStack(env=env) as s:
        s.start_redis()
        yield s


def _first_delta(client: Client, job_id: str) -> None:
    for event in client.stream(job_id, timeout=HANG_GUARD_S):
        if event.type == "delta":
            return


def _one_terminal(client: Client, job_id: str) -> list[int]:
    events = list(client.stream(job_id, timeout=30))
    terminal = [e for e in events if e.type in TERMINAL_EVENT_TYPES]
    assert len(terminal) == 1 and events[-1] is terminal[0]
    return sorted({e.run for e in events})


def test_sigterm_lets_the_running_stream_finish(stack: LocalStack) -> None:
    stack.start_simulator(tokens_per_s=4)  # ~5 s per job, well inside the 60 s soft window
    worker = stack.start_worker(pool="threads", concurrency=2, name="leaving")
    stack.wait_for_workers(1)
    with Client(stack.redis_url) as client:
        client.submit({"model": MODEL, "messages": PROMPT, "max_tokens": 20, "id": "term-finish"})
        _first_delta(client, "term-finish")
        os.kill(worker.pid, signal.SIGTERM)
        assert worker.wait(HANG_GUARD_S) == 0  # it waited for the job, then exited cleanly
        result = client.result("term-finish", timeout=10)
        assert result.status == "succeeded" and len(result.content.split()) == 20
        assert _one_terminal(client, "term-finish") == [1]  # finished by the run that had it


def test_sigterm_hands_back_what_the_window_cannot_finish(stack: LocalStack) -> None:
    stack.start_simulator(tokens_per_s=1)  # 20 s per job: longer than the 1 s window below
    leaving = stack.start_worker(
        pool="threads", concurrency=2, name="leaving", extra_env={"LLMQ_SOFT_SHUTDOWN_TIMEOUT": "1"}
    )
    stack.wait_for_workers(1)
    with Client(stack.redis_url) as client:
        client.submit({"model": MODEL, "messages": PROMPT, "max_tokens": 20, "id": "term-handback"})
        _first_delta(client, "term-handback")
        os.kill(leaving.pid, signal.SIGTERM)
        leaving.wait(HANG_GUARD_S)
        stack.start_worker(pool="threads", concurrency=2, name="staying")
        result = client.result("term-handback", timeout=HANG_GUARD_S)
        assert result.status == "succeeded" and len(result.content.split()) == 20
        assert _one_terminal(client, "term-handback") == [1, 2]  # handed back, run again once

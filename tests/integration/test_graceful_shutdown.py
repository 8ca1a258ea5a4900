"""SIGTERM on a worker process: it stops taking jobs, lets running streams finish within the
soft-shutdown window, and hands back what it cannot finish (nothing lost, nothing run twice at once).

Under both pools ``llmq worker`` offers (workers/runtime/shutdown.py): the worker exits by itself, with
0, as soon as no job runs (a bounded wait well under the window proves it, not a duration); a job
submitted after the signal is not started by it; a second SIGTERM hands the running jobs back at once.
"""

from __future__ import annotations

import os
import signal
import subprocess
import uuid
from collections.abc import Iterator

import pytest
import redis

from llmq.devstack import LocalStack
from producers import Client
from producers.settings import ProducerSettings
from tests.support.waits import until
from workers.contract import TERMINAL_EVENT_TYPES, JobKeys

pytestmark = pytest.mark.slow

MODEL = "openai:gpt-4o-mini"
PROMPT = [{"role": "user", "content": "finish before you go"}]
HANG_GUARD_S = 180
#: The soft window of the tests that must see the worker stop before it ends ...
LONG_WINDOW_S = "120"
#: ... and how long they wait for it: well under the window (a hang guard, not a timing check).
EARLY_EXIT_GUARD_S = 40
POOLS = ("threads", "gevent")


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


def _signalled(stack: LocalStack, name: str, worker: subprocess.Popen[bytes]) -> None:
    """SIGTERM ``worker`` and wait until it handled it (its soft shutdown logged its start)."""
    os.kill(worker.pid, signal.SIGTERM)
    until(lambda: "soft shutdown: waiting" in _log(stack, name), f"{name} to start its soft shutdown", HANG_GUARD_S)


def _log(stack: LocalStack, name: str) -> str:
    return (stack.log_dir / f"{name}.log").read_text(errors="replace")


def _assert_clean_log(stack: LocalStack, name: str, handed_back: tuple[str, ...] = ()) -> None:
    """No crash and no traceback in the worker's log: each job handed back is one line naming it (no
    traceback), once: a leaving worker takes nothing from the queue, not even the job it has just
    handed back (a second SIGTERM under gevent used to fetch it again and hand it back twice)."""
    log = _log(stack, name)
    assert "BlockingSwitchOutError" not in log, log[-3000:]
    assert "Traceback" not in log, log[-3000:]
    for job_id in handed_back:
        lines = [line for line in log.splitlines() if job_id in line and "handed back at shutdown" in line]
        assert len(lines) == 1, log[-3000:]


def _one_terminal(client: Client, job_id: str) -> list[int]:
    events = list(client.stream(job_id, timeout=30))
    terminal = [e for e in events if e.type in TERMINAL_EVENT_TYPES]
    assert len(terminal) == 1 and events[-1] is terminal[0]
    return sorted({e.run for e in events})


@pytest.mark.parametrize("pool", POOLS)
def test_sigterm_lets_the_running_stream_finish(stack: LocalStack, pool: str) -> None:
    stack.start_simulator(tokens_per_s=4)  # ~5 s per job, well inside the soft window
    worker = stack.start_worker(
        pool=pool, concurrency=2, name="leaving", extra_env={"LLMQ_SOFT_SHUTDOWN_TIMEOUT": LONG_WINDOW_S}
    )
    stack.wait_for_workers(1)
    with Client(stack.redis_url) as client:
        client.submit({"model": MODEL, "messages": PROMPT, "max_tokens": 20, "id": "term-finish"})
        _first_delta(client, "term-finish")
        _signalled(stack, "leaving", worker)
        # sent after the signal: the leaving worker must not start it
        client.submit({"model": MODEL, "messages": PROMPT, "max_tokens": 20, "id": "term-later"})
        # it stops once its job ended, long before its 120 s window would
        until(lambda: worker.poll() is not None, "the worker to exit by itself", EARLY_EXIT_GUARD_S)
        assert worker.returncode == 0
        _assert_clean_log(stack, "leaving")
        result = client.result("term-finish", timeout=10)
        assert result.status == "succeeded" and len(result.content.split()) == 20
        assert _one_terminal(client, "term-finish") == [1]  # finished by the run that had it
        assert client.redis.xlen(JobKeys("term-later").events) == 0  # never started
        stack.start_worker(pool=pool, concurrency=2, name="staying")
        later = client.result("term-later", timeout=HANG_GUARD_S)
        assert later.status == "succeeded" and len(later.content.split()) == 20
        assert _one_terminal(client, "term-later") == [1]  # its first run, on the other worker


@pytest.mark.parametrize("pool", POOLS)
def test_sigterm_hands_back_what_the_window_cannot_finish(stack: LocalStack, pool: str) -> None:
    stack.start_simulator(tokens_per_s=1)  # 20 s per job: longer than the 2 s window below
    leaving = stack.start_worker(
        pool=pool, concurrency=2, name="leaving", extra_env={"LLMQ_SOFT_SHUTDOWN_TIMEOUT": "2"}
    )
    stack.wait_for_workers(1)
    with Client(stack.redis_url) as client:
        client.submit({"model": MODEL, "messages": PROMPT, "max_tokens": 20, "id": "term-handback"})
        _first_delta(client, "term-handback")
        _signalled(stack, "leaving", leaving)
        assert leaving.wait(HANG_GUARD_S) == 0
        _assert_clean_log(stack, "leaving", handed_back=("term-handback",))
        stack.start_worker(pool=pool, concurrency=2, name="staying")
        result = client.result("term-handback", timeout=HANG_GUARD_S)
        assert result.status == "succeeded" and len(result.content.split()) == 20
        assert _one_terminal(client, "term-handback") == [1, 2]  # handed back, run again once


@pytest.mark.parametrize("pool", POOLS)
def test_a_second_sigterm_hands_back_at_once(stack: LocalStack, pool: str) -> None:
    stack.start_simulator(tokens_per_s=2)  # 10 s per job: it would finish inside the 120 s window
    leaving = stack.start_worker(
        pool=pool, concurrency=2, name="leaving", extra_env={"LLMQ_SOFT_SHUTDOWN_TIMEOUT": LONG_WINDOW_S}
    )
    stack.wait_for_workers(1)
    with Client(stack.redis_url) as client:
        client.submit({"model": MODEL, "messages": PROMPT, "max_tokens": 20, "id": "term-twice"})
        _first_delta(client, "term-twice")
        _signalled(stack, "leaving", leaving)
        os.kill(leaving.pid, signal.SIGTERM)  # the cold path: running jobs are handed back now
        leaving.wait(HANG_GUARD_S)
        _assert_clean_log(stack, "leaving", handed_back=("term-twice",))
        stack.start_worker(pool=pool, concurrency=2, name="staying")
        result = client.result("term-twice", timeout=HANG_GUARD_S)
        assert result.status == "succeeded" and len(result.content.split()) == 20
        # handed back by the second signal, not finished in the window: run again, once
        assert _one_terminal(client, "term-twice") == [1, 2]


@pytest.fixture
def amqp_stack(redis_server_url: str, amqp_server_url: str) -> Iterator[LocalStack]:
    """The ``stack`` with its job queue on RabbitMQ (this run's vhost, a queue of this test's own)."""
    url = redis_server_url.replace("/0", "/6")
    redis.Redis.from_url(url).flushdb()
    queue = f"llmq-term-{uuid.uuid4().hex[:8]}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMQ_")}
    env |= {"LLMQ_REDIS_URL": url, "LLMQ_BROKER_URL": amqp_server_url, "LLMQ_QUEUE": queue}
    with LocalStack(env=env) as s:
        s.start_redis()
        yield s
    from kombu import Connection

    with Connection(amqp_server_url) as conn:
        conn.default_channel.queue_delete(queue)


@pytest.mark.parametrize("pool", POOLS)
def test_sigterm_on_rabbitmq_hands_back_what_the_window_cannot_finish(amqp_stack: LocalStack, pool: str) -> None:
    """The same hand-back with the queue on RabbitMQ: the unfinished jobs are rejected back to the quorum
    queue (no visibility timeout there: a job not handed back would wait for the connection to drop)
    and the next worker runs each once more; the one submitted after the signal is not started."""
    stack = amqp_stack
    stack.start_simulator(tokens_per_s=1)  # 20 s per job: longer than the 2 s window below
    leaving = stack.start_worker(
        pool=pool, concurrency=2, name="leaving", extra_env={"LLMQ_SOFT_SHUTDOWN_TIMEOUT": "2"}
    )
    stack.wait_for_workers(1)
    ids = ["amqp-handback-1", "amqp-handback-2"]
    with Client(settings=ProducerSettings(**_producer_env(stack))) as client:
        for job_id in ids:
            client.submit({"model": MODEL, "messages": PROMPT, "max_tokens": 20, "id": job_id})
        for job_id in ids:
            _first_delta(client, job_id)
        _signalled(stack, "leaving", leaving)
        client.submit({"model": MODEL, "messages": PROMPT, "max_tokens": 20, "id": "amqp-later"})
        assert leaving.wait(HANG_GUARD_S) == 0
        _assert_clean_log(stack, "leaving", handed_back=tuple(ids))
        assert client.redis.xlen(JobKeys("amqp-later").events) == 0  # never started
        stack.start_worker(pool=pool, concurrency=4, name="staying")
        for job_id in ids:
            result = client.result(job_id, timeout=HANG_GUARD_S)
            assert result.status == "succeeded" and len(result.content.split()) == 20
            assert _one_terminal(client, job_id) == [1, 2]  # handed back, run again once
        later = client.result("amqp-later", timeout=HANG_GUARD_S)
        assert later.status == "succeeded" and _one_terminal(client, "amqp-later") == [1]


def _producer_env(stack: LocalStack) -> dict[str, str]:
    return {
        "redis_url": stack.env["LLMQ_REDIS_URL"],
        "broker_url": stack.env["LLMQ_BROKER_URL"],
        "queue": stack.env["LLMQ_QUEUE"],
    }

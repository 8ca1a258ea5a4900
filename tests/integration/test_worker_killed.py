"""A worker SIGKILLed or frozen mid-job, with the shipped defaults (visibility timeout, claim lease).

Two real worker processes share one Redis. The job's worker is killed (or SIGSTOPped) while it
streams; the job must move to the live worker on its own and end exactly once, charged once. The
frozen worker, woken after the job moved, must not publish into it or charge it (fencing by run).
No timing is asserted: the result waits are hang guards far below the old one-hour redelivery.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import redis
from celery import Celery

from llmq.devstack import LocalStack
from producers import Client
from producers.client import make_celery
from producers.settings import ProducerSettings
from tests.support.brokers import Broker
from tests.support.spend import one_call_usd
from tests.support.waits import until
from workers.accounting.ledger import GLOBAL_SCOPE, Ledger
from workers.settings import Settings

pytestmark = pytest.mark.slow

MODEL = "openai:gpt-4o-mini"
PROMPT = [{"role": "user", "content": "survive a crash"}]
#: Hang guard only: with the defaults a dead worker's job moves within ~20 s (it was 3600 s).
HANG_GUARD_S = 180


def _scope(ledger: Ledger) -> tuple[float, float]:
    status = next(s for s in ledger.show().scopes if s.scope == GLOBAL_SCOPE)
    return status.spent_usd, status.reserved_usd


@dataclass(frozen=True)
class Stack:
    stack: LocalStack
    workers: dict[str, subprocess.Popen[bytes]]
    url: str  # Redis: results, events, ledger
    broker: str  # the job queue: the same Redis, or RabbitMQ
    queue: str

    def client(self) -> Client:
        return Client(settings=ProducerSettings(redis_url=self.url, broker_url=self.broker, queue=self.queue))

    def celery(self) -> Celery:
        return make_celery(self.broker, self.queue)


@pytest.fixture
def two_workers(redis_server_url: str, broker: Broker) -> Iterator[Stack]:
    url = redis_server_url.replace("/0", "/5")
    redis.Redis.from_url(url).flushdb()
    broker_url = broker.url if broker.kind == "amqp" else url
    # the shipped defaults: no visibility timeout, claim lease or heartbeat override
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMQ_")}
    env.update(
        {
            "LLMQ_REDIS_URL": url,
            "LLMQ_BROKER_URL": broker_url,
            "LLMQ_QUEUE": broker.queue,
            "LLMQ_MONTHLY_BUDGET_USD": "10",
        }
    )
    defaults = Settings(redis_url=url)
    assert defaults.visibility_timeout <= 30 and defaults.claim_lease_s <= 30
    with LocalStack(env=env) as stack:
        stack.start_redis()
        stack.start_simulator(tokens_per_s=4)  # 20 tokens over ~5 s
        workers = {name: stack.start_worker(pool="threads", concurrency=4, name=name) for name in ("w1", "w2")}
        stack.wait_for_workers(2)
        try:
            yield Stack(stack, workers, url, broker_url, broker.queue)
        finally:
            for proc in workers.values():  # a frozen worker cannot handle the stack's SIGTERM
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGCONT)


def _holder(s: Stack, job_id: str) -> str:
    """The worker name (``w1``/``w2``) whose active tasks include ``job_id``."""
    app = s.celery()

    def holder() -> str | None:
        active = app.control.inspect(timeout=2).active() or {}
        for hostname, tasks in active.items():
            if any(job_id in str(t.get("args")) for t in tasks):
                return hostname.split("@", 1)[0]
        return None

    try:
        return until(holder, f"a worker to report {job_id} as active", HANG_GUARD_S, 0)
    finally:
        app.close()


def _active_on(s: Stack, name: str) -> list[object] | None:
    app = s.celery()
    try:
        replies = app.control.inspect(timeout=2).active() or {}
    finally:
        app.close()
    for hostname, tasks in replies.items():
        if hostname.startswith(f"{name}@"):
            return list(tasks)
    return None  # did not answer


def _start_and_pick_victim(client: Client, s: Stack, job_id: str) -> str:
    handle = client.submit({"model": MODEL, "messages": PROMPT, "max_tokens": 20, "id": job_id})
    for event in handle.stream(timeout=HANG_GUARD_S):
        if event.type == "delta":
            break
    return _holder(s, job_id)


@pytest.mark.parametrize("broker", ["redis", "amqp"], indirect=True)
def test_sigkill_mid_stream_moves_the_job_with_default_settings(two_workers: Stack) -> None:
    # on RabbitMQ the killed worker's connection drops and the broker redelivers at once; the new run
    # finds the dead run's claim until its lease lapses and re-queues itself with a countdown
    s = two_workers
    workers, url = s.workers, s.url
    with s.client() as client:
        ledger = Ledger(redis.Redis.from_url(url), monthly_limit_usd=10)
        victim = _start_and_pick_victim(client, s, "crash-1")
        assert _scope(ledger)[1] > 0  # the worst case is reserved while the call runs
        killed_at = time.monotonic()
        os.killpg(workers[victim].pid, signal.SIGKILL)
        workers[victim].wait(30)

        result = client.result("crash-1", timeout=HANG_GUARD_S)
        print(f"the job ended {time.monotonic() - killed_at:.1f} s after its worker was killed")
        assert result.status == "succeeded"
        events = list(client.stream("crash-1", timeout=10))
        assert [e.type for e in events].count("done") == 1 and events[-1].type == "done"
        assert {e.run for e in events} == {1, 2}  # consumers can see the job ran again

        spent, reserved = _scope(ledger)
        assert reserved == 0  # the live run took over the dead run's reservation (same call)
        assert spent == pytest.approx(one_call_usd(MODEL, PROMPT, 20))  # charged exactly once
        ledger.client.close()


def test_a_frozen_worker_woken_after_its_job_moved_writes_nothing(two_workers: Stack) -> None:
    # Redis only: RabbitMQ keeps a frozen (not dead) consumer's messages until its AMQP heartbeat lapses
    s = two_workers
    workers, url = s.workers, s.url
    with s.client() as client:
        ledger = Ledger(redis.Redis.from_url(url), monthly_limit_usd=10)
        victim = _start_and_pick_victim(client, s, "frozen-1")
        os.killpg(workers[victim].pid, signal.SIGSTOP)

        result = client.result("frozen-1", timeout=HANG_GUARD_S)  # finished by the other worker
        assert result.status == "succeeded"
        before = list(client.stream("frozen-1", timeout=10))
        spent_before = _scope(ledger)[0]

        os.killpg(workers[victim].pid, signal.SIGCONT)
        # the woken run notices (heartbeat or its next write) and stops; its task then ends
        until(lambda: _active_on(s, victim) == [], "the woken worker to drop the job", HANG_GUARD_S, poll_s=0.2)

        after = list(client.stream("frozen-1", timeout=10))
        assert after == before  # not one event written by the woken run
        assert [e.type for e in after].count("done") == 1 and after[-1].type == "done"
        assert [e.run for e in after if e.type == "start"] == [1, 2]
        assert all(e.run == 2 for e in after[after.index(next(e for e in after if e.run == 2)) :])
        spent, reserved = _scope(ledger)
        assert spent == spent_before == pytest.approx(one_call_usd(MODEL, PROMPT, 20))  # charged once
        assert reserved == 0
        assert client.get_result("frozen-1") == result
        ledger.client.close()

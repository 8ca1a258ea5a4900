"""A producer streaming a job's events rides out a real Redis restart mid-job, sync and async.

Real parts only: a durable ``redis-server`` (AOF, as shipped), one worker process, the simulator
streaming slowly, and a consumer following the job with ``Client.stream`` or ``AsyncClient.stream``
in a thread of its own. Once the consumer holds the first delta, Redis is SIGKILLed and started
again on the same port and data. Asserted: the consumer ends without an error, got every event the
job's Stream holds exactly once and in seq order (consecutive seqs, as replayed afterwards), and
exactly one terminal event, last, after the restart; ``result()`` agrees.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time

import pytest
import redis

from llmq.devstack import LocalStack
from llmq.localredis import ManagedRedis, ping
from producers import AsyncClient, Client
from producers.settings import ProducerSettings
from tests.support.brokers import queued_count
from tests.support.waits import until
from workers.contract import DEFAULT_QUEUE, TERMINAL_EVENT_TYPES, JobKeys, StreamEvent

pytestmark = pytest.mark.slow

MODEL = "openai:gpt-4o-mini"
HANG_GUARD_S = 180
#: How long Redis stays down: past redis-py's own reconnect retries, so the clients' ride-out runs
#: (a length, not an assertion: any outage must be ridden out).
OUTAGE_S = 3.0


class Consumer(threading.Thread):
    """Follows one job's events with the sync or the async client; keeps what it got, and any error."""

    def __init__(self, url: str, job_id: str, flavour: str) -> None:
        super().__init__(name=f"consumer-{flavour}", daemon=True)
        self.url, self.job_id, self.flavour = url, job_id, flavour
        self.events: list[StreamEvent] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            if self.flavour == "sync":
                with Client(self.url) as client:
                    for event in client.stream(self.job_id, timeout=HANG_GUARD_S):
                        self.events.append(event)
            else:
                asyncio.run(self._consume())
        except BaseException as exc:  # reported by the test
            self.error = exc

    async def _consume(self) -> None:
        async with AsyncClient(self.url) as client:
            async for event in client.stream(self.job_id, timeout=HANG_GUARD_S):
                self.events.append(event)


@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_a_streaming_consumer_rides_out_a_redis_restart(flavour: str) -> None:
    server = ManagedRedis(durable=True).start()
    url = server.url
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMQ_")}
    env.update({"LLMQ_REDIS_URL": url, "LLMQ_MONTHLY_BUDGET_USD": "100"})
    try:
        with LocalStack(env=env) as stack, Client(url) as client:
            stack.start_redis()  # adopts ours (LLMQ_REDIS_URL answers)
            stack.start_simulator(tokens_per_s=5)  # 30 tokens in ~6 s: the restart lands mid-stream
            stack.start_worker(pool="threads", concurrency=2, name="w1")
            stack.wait_for_workers(1)
            job_id = f"restart-{flavour}"
            client.submit(
                {"model": MODEL, "messages": [{"role": "user", "content": "go"}], "max_tokens": 30, "id": job_id}
            )
            consumer = Consumer(url, job_id, flavour)
            consumer.start()

            until(lambda: any(e.type == "delta" for e in consumer.events), "the first delta", guard_s=HANG_GUARD_S)
            seen_before = [e.type for e in consumer.events]
            server.kill()
            time.sleep(OUTAGE_S)
            server.start()
            assert ping(url)

            consumer.join(HANG_GUARD_S)
            assert not consumer.is_alive(), "the consumer hung"
            assert consumer.error is None, repr(consumer.error)

            got = consumer.events
            assert not TERMINAL_EVENT_TYPES & set(seen_before), "the job ended before the restart"
            assert [e.seq for e in got] == list(range(len(got))), [(e.seq, e.type) for e in got]
            stored = list(client.stream(job_id, timeout=30))  # the job's Stream, replayed afterwards
            assert [(e.seq, e.type) for e in got] == [(e.seq, e.type) for e in stored]
            terminal = [e for e in got if e.type in TERMINAL_EVENT_TYPES]
            assert len(terminal) == 1 and got[-1] is terminal[0], [e.type for e in got]
            assert terminal[0].type == "done"
            result = client.result(job_id, timeout=30)
            assert result.status == "succeeded"
    finally:
        server.stop()


@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_a_submit_rides_out_its_job_queue_restarting_between_registration_and_send(flavour: str) -> None:
    """The job queue on a Redis of its own (``LLMQ_BROKER_URL``) is down when the message is sent (the
    registration, in ``LLMQ_REDIS_URL``, went through): the submit waits for it and sends once."""
    state = ManagedRedis().start()
    broker = ManagedRedis(durable=True).start()
    broker.kill()  # down; started again on the same port below
    restarter = threading.Timer(OUTAGE_S, broker.start)
    try:
        settings = ProducerSettings(redis_url=state.url, broker_url=broker.url)
        job = {"model": MODEL, "messages": [{"role": "user", "content": "go"}], "id": f"send-{flavour}"}
        restarter.start()
        if flavour == "sync":
            with Client(settings=settings) as client:
                assert client.submit(job).enqueued
        else:

            async def submit() -> bool:
                async with AsyncClient(settings=settings) as client:
                    return (await client.submit(job)).enqueued

            assert asyncio.run(submit())
        restarter.join()
        queued = redis.Redis.from_url(broker.url)
        assert queued_count(queued, DEFAULT_QUEUE) == 1  # sent once
        queued.close()
        meta = redis.Redis.from_url(state.url)
        assert meta.hget(JobKeys(job["id"]).meta, "sent") == b"1"
        meta.close()
    finally:
        restarter.cancel()
        broker.stop()
        state.stop()

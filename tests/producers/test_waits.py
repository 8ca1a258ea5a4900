"""A wait that times out says what is true: no such job, queued with no worker on its queue, or running.

Real Redis; workers are real (the in-process one) or stand in by publishing a presence.
"""

from __future__ import annotations

import asyncio

import pytest
import redis

from llmq.localredis import ManagedRedis
from producers import AsyncClient, Client, ResultTimeoutError
from producers.settings import ProducerSettings
from simulator.app import SimulatorThread
from tests.support.waits import until
from workers.contract.catalog import ModelCatalog
from workers.runtime.presence import PresencePublisher

JOB = {"model": "openai:gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}]}


def test_no_worker_on_the_queue_is_said(redis_url: str) -> None:
    with Client(redis_url, queue="nobody-home") as client:
        handle = client.submit(JOB)
        with pytest.raises(ResultTimeoutError) as waited:
            handle.result(timeout=0.5)
        assert "the job is still queued and no worker consumes queue 'nobody-home'" in str(waited.value)
        assert "llmq worker" in str(waited.value)
        with pytest.raises(ResultTimeoutError) as streamed:
            list(handle.stream(timeout=0.5))
        assert "no worker consumes queue 'nobody-home'" in str(streamed.value)


def test_a_wait_that_ends_while_redis_is_down_says_so() -> None:
    """The wait reconnects until its timeout; then it cannot ask what is true of the job, and says
    that Redis is the thing to fix, with the URL (was only 'no terminal event for job ... within 1.5s',
    what ``llmq submit`` printed after its Redis died). Both clients."""
    with ManagedRedis() as server:
        with Client(server.url, queue="nobody-home") as client:
            handle = client.submit(JOB)
            server.stop()
            with pytest.raises(ResultTimeoutError) as waited:
                handle.result(timeout=1.5)

        async def wait_async() -> str:
            async with AsyncClient(server.url, queue="nobody-home") as aclient:
                with pytest.raises(ResultTimeoutError) as awaited:
                    await aclient.result(handle.id, timeout=1.5)
                return str(awaited.value)

        async_text = asyncio.run(wait_async())
    for text in (str(waited.value), async_text):
        assert f"no terminal event for job {handle.id} within 1.5s: Redis at {server.url} cannot be reached now" in text
        assert "the job runs once Redis is back" in text, text


async def test_the_async_client_says_the_same(redis_url: str) -> None:
    async with AsyncClient(redis_url, queue="nobody-home") as client:
        handle = await client.submit(JOB)
        with pytest.raises(ResultTimeoutError, match="no worker consumes queue 'nobody-home'"):
            await handle.result(timeout=0.5)
        with pytest.raises(ResultTimeoutError, match="no job with this id was submitted"):
            await client.result("never-submitted", timeout=0.5)


def test_an_unknown_job_is_said(redis_url: str) -> None:
    with Client(redis_url) as client, pytest.raises(ResultTimeoutError) as waited:
        client.result("never-submitted", timeout=0.5)
    assert "no job with this id was submitted to this Redis (redis://" in str(waited.value)


def test_busy_workers_are_not_absent_workers(redis_url: str, redis_client: redis.Redis) -> None:
    stand_in = PresencePublisher(redis_client, "busy-worker", ["busy-queue"], ModelCatalog())
    stand_in.start()  # a worker of that queue that takes nothing (all its slots busy)
    try:
        with Client(redis_url, queue="busy-queue") as client:
            handle = client.submit(JOB)
            with pytest.raises(ResultTimeoutError, match="still queued; 1 live worker"):
                handle.result(timeout=0.5)
    finally:
        stand_in.stop()


def test_a_running_job_is_said_to_run(worker: object, client: Client, simulator: SimulatorThread) -> None:
    simulator.simulator.config.tokens_per_s = 10  # 20 tokens: ~2 s of stream
    handle = client.submit(JOB)
    until(lambda: client.redis.exists(f"llmq:job:{{{handle.id}}}:events") == 1, "the job to start", 60)
    with pytest.raises(ResultTimeoutError) as waited:
        handle.result(timeout=0.2)
    assert "the job started (its last event is" in str(waited.value) and "has not ended" in str(waited.value)
    assert handle.result(timeout=60).status == "succeeded"


def test_a_settings_object_names_its_queue_in_the_message(redis_url: str) -> None:
    settings = ProducerSettings(redis_url=redis_url, queue="from-settings")
    with Client(settings=settings) as client, pytest.raises(ResultTimeoutError, match="queue 'from-settings'"):
        client.submit(JOB).result(timeout=0.3)


def test_a_wait_names_the_queue_the_job_went_to_and_the_queues_workers_consume(
    redis_url: str, redis_client: redis.Redis
) -> None:
    """A producer or subscriber with another LLMQ_QUEUE than the job's (or than the workers'): the reason
    names the job's own queue (kept in its metadata) and the queues the live workers do consume."""
    stand_in = PresencePublisher(redis_client, "a-worker", ["llmq"], ModelCatalog())
    stand_in.start()
    try:
        with Client(redis_url, queue="typo-queue") as sender, Client(redis_url, queue="llmq") as reader:
            handle = sender.submit(JOB)
            assert sender.status(handle.id)["queue"] == "typo-queue"  # type: ignore[index]
            for client in (sender, reader):
                with pytest.raises(ResultTimeoutError) as waited:
                    client.result(handle.id, timeout=0.3)
                message = str(waited.value)
                assert (
                    "still queued and no worker consumes queue 'typo-queue'; the live workers consume 'llmq'" in message
                )
    finally:
        stand_in.stop()


def test_a_wait_without_a_timeout_logs_once_that_no_worker_consumes_the_queue(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """``job.result()`` with no timeout and no worker: a newcomer is told once, and it keeps waiting
    (here until the short timeout that ends the test)."""
    settings = ProducerSettings(redis_url=redis_url, queue="nobody-home", worker_check_s=0.3)
    with Client(settings=settings) as client, caplog.at_level("WARNING", logger="llmq.producer"):
        handle = client.submit(JOB)
        with pytest.raises(ResultTimeoutError):
            handle.result(timeout=3)
    notes = [r.getMessage() for r in caplog.records if "still waiting" in r.getMessage()]
    assert notes == [
        f"job {handle.id} is still queued and no worker consumes queue 'nobody-home' "
        "(start one: llmq worker, with the same LLMQ_QUEUE and LLMQ_REDIS_URL); still waiting"
    ]


async def test_the_async_client_logs_it_once_too(redis_url: str, caplog: pytest.LogCaptureFixture) -> None:
    settings = ProducerSettings(redis_url=redis_url, queue="nobody-home", worker_check_s=0.3)
    async with AsyncClient(settings=settings) as client:
        with caplog.at_level("WARNING", logger="llmq.producer"):
            handle = await client.submit(JOB)
            with pytest.raises(ResultTimeoutError):
                await handle.result(timeout=3)
    assert len([r for r in caplog.records if "no worker consumes queue 'nobody-home'" in r.getMessage()]) == 1

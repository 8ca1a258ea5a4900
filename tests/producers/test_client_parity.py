"""``Client`` and ``AsyncClient`` behave alike: the same scenarios, run on both, on a real Redis.

The async client is driven through :class:`_Blocking`, which runs each coroutine (and collects
each async stream) on one private event loop, so every scenario is written once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import pytest
import redis

from producers import AsyncClient, Client, InvalidJobError, ProducerSettings, ResultTimeoutError
from tests.support.brokers import queued_count
from workers.contract import CompletionResult, DeltaEvent, DoneEvent, JobKeys, StartEvent, StreamEvent

JOB = {"model": "openai:gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


class Producer(Protocol):
    queue: str

    def submit(self, job: dict[str, Any], **overrides: Any) -> Any: ...
    def status(self, job_id: str) -> dict[str, str] | None: ...
    def get_result(self, job_id: str) -> CompletionResult | None: ...
    def result(self, job_id: str, timeout: float | None = None) -> CompletionResult: ...
    def stream(self, job_id: str, **kwargs: Any) -> list[StreamEvent]: ...
    def cancel(self, job_id: str) -> bool: ...


class _Sync:
    def __init__(self, client: Client) -> None:
        self._client = client
        self.queue = client.queue

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def stream(self, job_id: str, **kwargs: Any) -> list[StreamEvent]:
        return list(self._client.stream(job_id, **kwargs))


class _Blocking:
    """The async client's methods, each run to completion on a private loop."""

    def __init__(self, client: AsyncClient, loop: asyncio.AbstractEventLoop) -> None:
        self._client = client
        self._loop = loop
        self.queue = client.queue

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self._client, name)
        return lambda *a, **kw: self._loop.run_until_complete(method(*a, **kw))

    def stream(self, job_id: str, **kwargs: Any) -> list[StreamEvent]:
        async def collect() -> list[StreamEvent]:
            return [e async for e in self._client.stream(job_id, **kwargs)]

        return self._loop.run_until_complete(collect())


@pytest.fixture(params=["Client", "AsyncClient"])
def producer(request: pytest.FixtureRequest, redis_url: str) -> Iterator[Producer]:
    settings = ProducerSettings(redis_url=redis_url, queue="parity")
    if request.param == "Client":
        client = Client(settings=settings)
        yield _Sync(client)
        client.close()
        return
    loop = asyncio.new_event_loop()
    aclient = AsyncClient(settings=settings)
    yield _Blocking(aclient, loop)
    loop.run_until_complete(aclient.aclose())
    loop.close()


def _publish(r: redis.Redis, job_id: str, events: list[StreamEvent], result: CompletionResult | None) -> None:
    """What a worker leaves behind: the replay Stream (entry ids ``<seq>-1``) and the stored result."""
    keys = JobKeys(job_id)
    for event in events:
        r.xadd(keys.events, {"e": event.model_dump_json()}, id=f"{event.seq}-1")
    if result is not None:
        r.set(keys.result, result.model_dump_json())


def test_an_invalid_job_is_refused_before_anything_is_enqueued(producer: Producer, redis_client: redis.Redis) -> None:
    with pytest.raises(InvalidJobError) as info:
        producer.submit({"model": "openai:gpt-4o-mini", "messages": [], "max_tokens": -1})
    assert info.value.errors and "max_tokens" in str(info.value)
    assert redis_client.dbsize() == 0


def test_submit_registers_once_and_sends_to_the_settings_queue(producer: Producer, redis_client: redis.Redis) -> None:
    handle = producer.submit({**JOB, "id": "job-parity-1"})
    assert (handle.id, handle.enqueued) == ("job-parity-1", True)
    status = producer.status("job-parity-1")
    assert status is not None and status["state"] == "queued" and status["sent"] == "1"
    assert status["tenant"] == "default" and float(status["submitted_at"]) > 0
    assert (
        producer.queue == "parity"
        and queued_count(redis_client, "parity") == 1
        and queued_count(redis_client, "llmq") == 0
    )
    again = producer.submit({**JOB, "id": "job-parity-1"})
    assert not again.enqueued and queued_count(redis_client, "parity") == 1


def test_an_unknown_job_has_no_status_and_no_result(producer: Producer) -> None:
    assert producer.status("job-nobody") is None
    assert producer.get_result("job-nobody") is None
    with pytest.raises(ResultTimeoutError):
        producer.result("job-nobody", timeout=0.2)


def test_stream_replays_in_order_and_result_reads_the_stored_one(producer: Producer, redis_client: redis.Redis) -> None:
    job_id = "job-parity-2"
    result = CompletionResult(id=job_id, status="succeeded", content="ab")
    events: list[StreamEvent] = [
        StartEvent(job_id=job_id, seq=0, model="openai:gpt-4o-mini"),
        DeltaEvent(job_id=job_id, seq=1, text="a"),
        DeltaEvent(job_id=job_id, seq=2, text="b"),
        DoneEvent(job_id=job_id, seq=3, result=result),
    ]
    _publish(redis_client, job_id, events, result)
    assert [(e.seq, e.type) for e in producer.stream(job_id, timeout=10)] == [
        (0, "start"),
        (1, "delta"),
        (2, "delta"),
        (3, "done"),
    ]
    assert [e.seq for e in producer.stream(job_id, from_seq=2, timeout=10)] == [2, 3]
    assert [e.type for e in producer.stream(job_id, timeout=10, deltas=False)] == ["start", "done"]
    assert producer.result(job_id, timeout=10) == result == producer.get_result(job_id)


def test_cancel_is_true_until_the_job_has_a_result(producer: Producer, redis_client: redis.Redis) -> None:
    producer.submit({**JOB, "id": "job-parity-3"})
    assert producer.cancel("job-parity-3") is True
    assert redis_client.get(JobKeys("job-parity-3").cancel) == b"1"
    _publish(redis_client, "job-parity-4", [], CompletionResult(id="job-parity-4", status="succeeded"))
    assert producer.cancel("job-parity-4") is False


def test_a_followed_job_whose_records_vanish_ends_the_wait_with_job_lost(producer: Producer, redis_url: str) -> None:
    """A job's records gone while it is followed (a Redis restarted without persistence, or flushed):
    the stream and the result end with :class:`JobLostError` at the next idle look, instead of waiting
    for a terminal event that cannot come; an id never seen keeps waiting (it may be submitted yet)."""
    import threading

    from producers import JobLostError

    job_id = producer.submit({**JOB, "id": "vanishing-1"}).id  # queued: no worker takes "parity"
    side = redis.Redis.from_url(redis_url)
    doomed = [JobKeys(job_id).meta, JobKeys(job_id).events, JobKeys(job_id).result]
    for follow in (
        lambda: producer.stream(job_id, timeout=60, idle_check_s=0.05),
        lambda: producer.result(job_id, timeout=60),
    ):
        side.hset(JobKeys(job_id).meta, "state", "queued")  # (back for the second follow)
        wipe = threading.Timer(0.3, lambda: side.delete(*doomed))
        wipe.start()
        with pytest.raises(JobLostError, match="vanished from Redis"):
            follow()
        wipe.join()
    with pytest.raises(ResultTimeoutError) as waited:
        producer.stream("never-submitted-1", timeout=0.3, idle_check_s=0.05)
    assert not isinstance(waited.value, JobLostError)
    side.close()

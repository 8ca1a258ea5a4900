"""A submit in one round trip (``producers/onestep.py``): the message Celery's ``send_task`` would queue,
registered and queued by one script, and ``send_task`` wherever that could differ."""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from celery import signals

from producers import Client
from producers.errors import QueueFullError
from producers.settings import ProducerSettings
from tests.support.brokers import queued_count, queued_payloads
from workers.connections.schedule import conf_fields, publish_conf
from workers.contract import JobKeys

JOBS: list[dict[str, Any]] = [
    {"model": "openai:gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
    {
        "model": "openai:gpt-4o-mini",
        "fallbacks": ["anthropic:claude-haiku-4-5"],
        "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": 'naïve café ☕ "q"'}],
        "tenant": "acme",
        "priority": "bulk",
        "concurrency_key": "user-42",
        "metadata": {"custom_id": "line-7", "n": "3"},
        "tags": ["team:search", "exp"],
        "max_tokens": 77,
        "temperature": 0.3,
        "deadline_s": 120,
        "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    },
    {"model": "openai:gpt-4o-mini", "messages": [{"role": "user", "content": "x" * 40_000}], "priority": "interactive"},
]


def _message(r: redis.Redis) -> dict[str, Any]:
    (raw,) = queued_payloads(r, "llmq")
    message: dict[str, Any] = json.loads(raw)
    return message


class CountingConnection(redis.Connection):
    """Counts the writes (requests: a command, or a pipeline's commands at once) sent to Redis."""

    writes = 0

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        CountingConnection.writes += 1
        super().send_packed_command(command, check_health)


@pytest.fixture
def quiet_client(redis_url: str) -> Iterator[Client]:
    """A client whose ``task-sent`` events are off (its Redis writes are its submits' own), on
    connections that count them."""
    pool = redis.ConnectionPool.from_url(redis_url, connection_class=CountingConnection)
    settings = ProducerSettings(redis_url=redis_url, task_events=False)
    with Client(settings=settings, redis_client=redis.Redis(connection_pool=pool)) as client:
        yield client


@pytest.mark.parametrize("index", range(len(JOBS)))
def test_the_one_step_message_is_the_one_send_task_queues(
    redis_url: str, redis_client: redis.Redis, index: int
) -> None:
    with Client(redis_url) as client:
        assert client.one_step.enabled
        job = client.validate({**JOBS[index], "id": f"golden-{index}"})
        client.one_step.enabled = False  # Celery's send_task
        assert client.submit(job).enqueued
        by_celery = _message(redis_client)
        redis_client.flushdb()
        client.one_step.enabled = True
        assert client.submit(job).enqueued
        by_one_step = _message(redis_client)
    tag = by_celery["properties"].pop("delivery_tag")
    assert by_one_step["properties"].pop("delivery_tag") != tag  # each message its own tag, as kombu does
    assert by_one_step == by_celery  # headers, properties, body: field by field
    assert list(by_one_step["headers"]) == list(by_celery["headers"])  # in the same order too
    assert redis_client.hmget(JobKeys(job.id).meta, "sent", "queue", "tenant") == [b"1", b"llmq", job.tenant.encode()]


def test_a_submit_is_one_round_trip(quiet_client: Client, redis_client: redis.Redis) -> None:
    job = {"model": "openai:gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    quiet_client.submit(job)  # the workers' catalog and the scripts, read and loaded once
    before = CountingConnection.writes
    handles = [quiet_client.submit(job) for _ in range(20)]
    assert CountingConnection.writes - before == 20  # one script call each (was two: register, then push)
    assert all(h.enqueued for h in handles) and queued_count(redis_client, "llmq") == 21


def test_a_duplicate_id_queues_nothing_and_a_refused_job_writes_nothing(
    quiet_client: Client, redis_client: redis.Redis
) -> None:
    job = {"model": "openai:gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "tenant": "capped"}
    assert quiet_client.submit({**job, "id": "dup-1"}).enqueued
    assert not quiet_client.submit({**job, "id": "dup-1"}).enqueued  # a duplicate: nothing queued
    assert queued_count(redis_client, "llmq") == 1
    fields = conf_fields(weights={}, key_concurrency=0, keys={}, retry_after_s=3, tenants={"capped": {"max_queued": 1}})
    publish_conf(redis_client, fields)
    with pytest.raises(QueueFullError) as refused:
        quiet_client.submit({**job, "id": "over-1"})
    assert (refused.value.queued, refused.value.max_queued) == (1, 1)
    assert not redis_client.exists(JobKeys("over-1").meta)  # no registration left behind
    assert queued_count(redis_client, "llmq") == 1
    assert quiet_client.submit({**job, "tenant": "other"}).enqueued  # another tenant is not capped


def test_a_receiver_of_celerys_publish_signals_gets_send_task(quiet_client: Client, redis_client: redis.Redis) -> None:
    seen: list[str] = []

    def receiver(sender: str | None = None, headers: dict[str, Any] | None = None, **_: Any) -> None:
        seen.append(str((headers or {}).get("id")))

    job = {"model": "openai:gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    signals.before_task_publish.connect(receiver, weak=False)
    try:
        handle = quiet_client.submit(job)
    finally:
        signals.before_task_publish.disconnect(receiver)
    assert seen == [handle.id]  # the signal fired: Celery sent it
    after = quiet_client.submit(job)
    assert seen == [handle.id] and after.enqueued  # none connected: one step, no signal
    assert queued_count(redis_client, "llmq") == 2


def test_content_shown_to_monitors_takes_send_task(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMQ_MONITOR_CONTENT", "1")
    with Client(redis_url) as client:
        assert not client.one_step.enabled  # Celery's own argsrepr of the whole job


def test_the_same_stamped_job_submitted_twice_is_a_duplicate(quiet_client: Client, redis_client: redis.Redis) -> None:
    """The script knows a retry of its own call by the call's nonce, not by the job's stamp: a job
    validated once (stamped) and submitted twice is queued once and the second submit says so."""
    job = quiet_client.validate({"model": "openai:gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})
    assert [quiet_client.submit(job).enqueued, quiet_client.submit(job).enqueued] == [True, False]
    assert queued_count(redis_client, "llmq") == 1


def test_a_wrapped_send_task_gets_every_job(quiet_client: Client, redis_client: redis.Redis) -> None:
    """A tracing integration's wrapper around ``send_task`` (its headers, its spans) sees every job."""
    seen: list[str] = []
    original = quiet_client.celery.send_task

    @functools.wraps(original)
    def traced(*args: Any, **kwargs: Any) -> Any:
        seen.append(str(kwargs.get("task_id")))
        return original(*args, **kwargs)

    quiet_client.celery.send_task = traced  # type: ignore[method-assign]
    handle = quiet_client.submit({"model": "openai:gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})
    assert seen == [handle.id] and queued_count(redis_client, "llmq") == 1


def test_a_closed_clients_submit_takes_send_task(redis_url: str, redis_client: redis.Redis) -> None:
    """After ``close`` the batched ``task-sent`` events are closed: Celery publishes the job's event itself."""
    client = Client(redis_url)
    job = client.validate({"model": "openai:gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})
    assert client.in_one_step(job)
    client.close()
    assert not client.in_one_step(job)
    assert client.submit(job).enqueued and queued_count(redis_client, "llmq") == 1

"""The producer's registration script on a real Redis: once per job, and safe to repeat within one submit."""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis
from kombu import Connection

from producers import Client
from producers.core import REGISTER_LUA, RESEND_AFTER_S
from producers.settings import ProducerSettings
from tests.support.brokers import queued_count
from tests.support.redisproxy import ReplyCutProxy
from workers.connections.schedtransport import SchedulingTransport
from workers.contract import JobKeys


@pytest.fixture
def register(redis_url: str) -> Iterator[tuple[redis.Redis, object]]:
    client = redis.Redis.from_url(redis_url)
    yield client, client.register_script(REGISTER_LUA)
    client.close()


def _args(stamp: float) -> list[object]:
    return ["tenant-a", stamp, 3600, RESEND_AFTER_S, "reg-1"]


def test_a_retried_submit_is_still_its_callers_registration_and_another_submit_is_a_duplicate(
    register: tuple[redis.Redis, object],
) -> None:
    client, script = register
    keys = [JobKeys("reg-1").meta, ""]
    assert script(keys=keys, args=_args(1000.5)) == 1  # fresh
    assert script(keys=keys, args=_args(1000.5)) == 1  # the same submit, its reply lost: still ours
    assert script(keys=keys, args=_args(1001.0)) == 0  # another submit of the same id: a duplicate
    assert script(keys=keys, args=_args(1000.5 + RESEND_AFTER_S + 1)) == 2  # never sent: send it again
    client.hset(keys[0], "sent", 1)
    assert script(keys=keys, args=_args(1000.5 + RESEND_AFTER_S + 1)) == 0  # sent: never again
    assert client.hget(keys[0], "tenant") == b"tenant-a"
    assert client.hget(keys[0], "state") == b"queued"


def test_the_push_records_the_send_in_the_registration_in_the_same_step(
    redis_url: str, redis_client: redis.Redis
) -> None:
    """With the queue in the producer's Redis, the push script marks the job's registration sent (and
    on which queue), so a submit is a registration and a push: two round trips, as before the
    scheduler's push there were three. A queue on a Redis of its own leaves it to the producer."""
    with Client(redis_url) as client:
        assert client.sent_by_push
        handle = client.submit({"model": "openai:gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})
        assert redis_client.hmget(JobKeys(handle.id).meta, "sent", "queue") == [b"1", b"llmq"]
        assert queued_count(redis_client, "llmq") == 1
    # a message without a registration (a job id nothing registered: another app's) is queued, no hash made
    with Connection(redis_url, transport=SchedulingTransport) as conn, conn.Producer() as producer:
        producer.publish(
            {"n": 1}, routing_key="llmq", serializer="json", headers={"id": "unregistered-1", "llmq": {"tenant": "x"}}
        )
    assert not redis_client.exists(JobKeys("unregistered-1").meta)
    assert queued_count(redis_client, "llmq") == 2
    broker_url = urlunsplit(urlsplit(redis_url)._replace(path="/15"))  # the queue in another database
    with Client(settings=ProducerSettings(redis_url=redis_url, broker_url=broker_url)) as other:
        assert not other.sent_by_push  # the queue's Redis is not the registration's: the producer marks it
        handle = other.submit({"model": "openai:gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})
        assert redis_client.hmget(JobKeys(handle.id).meta, "sent", "queue") == [b"1", b"llmq"]
    broker = redis.Redis.from_url(broker_url)
    assert queued_count(broker, "llmq") == 1 and not broker.exists(JobKeys(handle.id).meta)
    broker.flushdb()
    broker.close()


@pytest.mark.parametrize("own_redis", [False, True], ids=["queue-beside-registrations", "queue-on-a-redis-of-its-own"])
def test_a_push_whose_reply_was_lost_is_queued_once(redis_url: str, redis_client: redis.Redis, own_redis: bool) -> None:
    """Redis ran the push and the connection dropped before its reply arrived (a restart, a fail-over,
    a network cut): the producer cannot tell, rides it out and pushes again, and that second push of the
    same submit queues nothing - one submit, one message (was two: the ride-out re-sent blindly). With
    the queue on a Redis of its own the push remembers the send there for the ride-out's length."""
    marker = b"reply-lost-7f3e"  # in the push only (the message's scheduling header), not in the registration
    job = {"model": "openai:gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "id": "cut-1"}
    job["concurrency_key"] = marker.decode()
    queue_url = urlunsplit(urlsplit(redis_url)._replace(path="/15")) if own_redis else redis_url
    queue_redis = redis.Redis.from_url(queue_url)
    proxy = ReplyCutProxy(queue_url, marker)
    try:
        with proxy as proxied:
            own = ProducerSettings(redis_url=redis_url, broker_url=proxied)
            with Client(settings=own if own_redis else ProducerSettings(redis_url=proxied)) as client:
                assert client.sent_by_push is not own_redis
                assert client.submit(job).enqueued
                assert not client.submit(job).enqueued  # a later submit of the id is a duplicate, as ever
        assert proxy.cuts == 1  # the push ran and its reply was lost
        assert queued_count(queue_redis, "llmq") == 1
        assert redis_client.hmget(JobKeys("cut-1").meta, "sent", "queue") == [b"1", b"llmq"]
    finally:
        if own_redis:
            queue_redis.flushdb()
        queue_redis.close()

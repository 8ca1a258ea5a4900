"""The broker's atomic fetch (workers/runtime/broker.py) on a real Redis, through kombu's own API.

A fetched message is in ``unacked`` + ``unacked_index`` and no longer in its queue, in one step; a
channel that took a message and died before delivering it leaves it there, and kombu's restore of
aged entries returns it; a live holder's heartbeat keeps it. Entries are aged through the channel's
clock seam, not by sleeping: the tests assert counts and contents, never durations.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from kombu import Connection, Consumer, Exchange, Queue

from workers.runtime.broker import MALFORMED_KEY, Channel, Transport

QUEUE = "fetch-test"
EXCHANGE = Exchange(QUEUE, "direct", durable=True)
KOMBU_QUEUE = Queue(QUEUE, EXCHANGE, routing_key=QUEUE, durable=True)


class Died(BaseException):
    """What a SIGKILL between the fetch and the delivery looks like to the test: nothing after it runs."""


class DyingChannel(Channel):
    def on_fetched(self, delivery_tag: str) -> None:
        raise Died(delivery_tag)


class DyingTransport(Transport):
    Channel = DyingChannel


def _connection(url: str, transport: type[Transport] = Transport, **options: Any) -> Connection:
    return Connection(url, transport=transport, transport_options={"visibility_timeout": 10, **options})


def _publish(url: str, body: object, *, priority: int | None = None, headers: dict[str, str] | None = None) -> None:
    with _connection(url) as conn, conn.Producer() as producer:
        producer.publish(
            body,
            exchange=EXCHANGE,
            routing_key=QUEUE,
            declare=[KOMBU_QUEUE],
            serializer="json",
            priority=priority,
            headers=headers,
        )


@pytest.fixture
def url(redis_url: str) -> Iterator[str]:
    yield redis_url


def _aged(channel: Channel) -> None:
    """Make this channel's fetches score their entries far in the past (older than any timeout)."""
    channel.clock = lambda: time.time() - 3600  # type: ignore[method-assign]


def test_a_fetched_message_is_in_unacked_and_not_in_the_queue(url: str, redis_client: redis.Redis) -> None:
    _publish(url, {"n": 1})
    assert redis_client.llen(QUEUE) == 1
    with _connection(url) as conn:
        channel = conn.channel()
        message = channel.basic_get(QUEUE)
        assert message is not None and message.payload == {"n": 1}
        tag = message.delivery_tag
        assert redis_client.llen(QUEUE) == 0
        assert redis_client.zscore("unacked_index", tag) is not None
        payload, exchange, routing_key = json.loads(redis_client.hget("unacked", tag) or b"")
        # what kombu's QoS.append stores: the payload as queued, its exchange and routing key
        assert (exchange, routing_key) == (QUEUE, QUEUE)
        assert payload["properties"]["delivery_tag"] == tag
        assert list(channel.qos._delivered) == [tag]  # held: the heartbeat re-scores it
        message.ack()
        assert redis_client.hlen("unacked") == 0 and redis_client.zcard("unacked_index") == 0


def test_a_consumer_fetches_through_the_wait_and_the_script(url: str, redis_client: redis.Redis) -> None:
    for n in range(3):
        _publish(url, {"n": n})
    got: list[object] = []
    with _connection(url) as conn:
        channel = conn.channel()
        with Consumer(channel, [KOMBU_QUEUE], callbacks=[lambda body, message: got.append((body, message))]):
            while len(got) < 3:
                conn.drain_events(timeout=10)
        bodies = [body for body, _ in got]  # type: ignore[misc]
        assert bodies == [{"n": 0}, {"n": 1}, {"n": 2}]  # FIFO, as with BRPOP
        assert redis_client.llen(QUEUE) == 0 and redis_client.hlen("unacked") == 3
        for _, message in got:  # type: ignore[misc]
            message.ack()
        assert redis_client.hlen("unacked") == 0 and redis_client.zcard("unacked_index") == 0


def test_a_channel_that_died_after_the_fetch_gets_its_message_restored(url: str, redis_client: redis.Redis) -> None:
    _publish(url, {"job": "survives"})
    with _connection(url, DyingTransport) as dying:
        channel = dying.channel()
        _aged(channel)
        with Consumer(channel, [KOMBU_QUEUE], callbacks=[lambda *_: None]), pytest.raises(Died) as died:
            dying.drain_events(timeout=10)
        tag = str(died.value)
        # the instant after the script: in the bookkeeping, in no queue, held by nobody
        assert redis_client.llen(QUEUE) == 0
        assert redis_client.hexists("unacked", tag) and redis_client.zscore("unacked_index", tag) is not None
        assert not channel.qos._delivered
        channel.do_restore = False  # it died: no restore at close
    with _connection(url) as conn:
        channel = conn.channel()
        channel.qos.restore_visible(num=10, interval=1)  # what every consumer runs every few seconds
        assert redis_client.hlen("unacked") == 0 and redis_client.zcard("unacked_index") == 0
        assert redis_client.llen(QUEUE) == 1
        message = channel.basic_get(QUEUE)
        assert message is not None and message.payload == {"job": "survives"}
        assert message.delivery_info["redelivered"] is True
        assert message.delivery_tag != tag  # re-tagged on restore (a late ack of the old tag is harmless)
        message.ack()


def test_a_live_holder_keeps_its_message_through_a_restore(url: str, redis_client: redis.Redis) -> None:
    _publish(url, {"job": "held"})
    with _connection(url) as owner, _connection(url) as other:
        held = owner.channel()
        _aged(held)
        message = held.basic_get(QUEUE)
        assert message is not None
        assert held.refresh_unacked() == 1  # the heartbeat: the aged entry is re-scored to now
        other.channel().qos.restore_visible(num=10, interval=1)
        assert redis_client.llen(QUEUE) == 0 and redis_client.hlen("unacked") == 1
        message.ack()


def test_one_message_two_fetchers_one_wins(url: str, redis_client: redis.Redis) -> None:
    _publish(url, {"n": 1})
    with _connection(url) as a, _connection(url) as b:
        first, second = a.channel(), b.channel()
        assert first.fetch([QUEUE]) is not None
        assert second.fetch([QUEUE]) is None
        assert redis_client.hlen("unacked") == 1 and redis_client.llen(QUEUE) == 0


def test_a_prioritised_message_on_an_unwatched_list_is_still_taken(url: str, redis_client: redis.Redis) -> None:
    _publish(url, {"urgent": False}, priority=0)
    _publish(url, {"urgent": True}, priority=9)  # kombu's Redis priorities: a list of its own
    assert redis_client.llen(QUEUE) == 1
    got: list[object] = []
    with _connection(url) as conn:
        channel = conn.channel()
        with Consumer(channel, [KOMBU_QUEUE], callbacks=[lambda body, message: got.append((body, message))]):
            while len(got) < 2:
                conn.drain_events(timeout=10)
        assert sorted(str(body) for body, _ in got) == ["{'urgent': False}", "{'urgent': True}"]  # type: ignore[misc]
        assert redis_client.hlen("unacked") == 2
        for _, message in got:  # type: ignore[misc]
            message.ack()


def test_an_unreadable_payload_is_set_aside_not_lost(url: str, redis_client: redis.Redis) -> None:
    _publish(url, {"n": 1})
    redis_client.rpush(QUEUE, b"not json")  # the tail: taken first
    with _connection(url) as conn:
        channel = conn.channel()
        assert channel.fetch([QUEUE]) is None
        assert redis_client.lrange(MALFORMED_KEY, 0, -1) == [b"not json"]
        message = channel.basic_get(QUEUE)
        assert message is not None and message.payload == {"n": 1}
        message.ack()


def test_no_ack_get_records_nothing(url: str, redis_client: redis.Redis) -> None:
    _publish(url, {"n": 1})
    with _connection(url) as conn:
        message = conn.channel().basic_get(QUEUE, no_ack=True)
        assert message is not None and message.payload == {"n": 1}
    assert redis_client.hlen("unacked") == 0 and redis_client.llen(QUEUE) == 0


def test_a_full_redis_refuses_the_wait_but_the_fetch_still_takes(url: str, redis_client: redis.Redis) -> None:
    for n in range(2):
        _publish(url, {"n": n})
    got: list[object] = []
    with _connection(url) as conn:
        channel = conn.channel()
        with Consumer(channel, [KOMBU_QUEUE], callbacks=[lambda body, message: got.append((body, message))]):
            redis_client.config_set("maxmemory", 1)  # noeviction: BLMOVE (and any growing write) is refused
            try:
                with pytest.raises(redis.exceptions.OutOfMemoryError):
                    redis_client.lmove(QUEUE, QUEUE, "RIGHT", "RIGHT")
                while len(got) < 2:
                    conn.drain_events(timeout=10)
                assert [body for body, _ in got] == [{"n": 0}, {"n": 1}]  # type: ignore[misc]
                assert redis_client.hlen("unacked") == 2 and redis_client.llen(QUEUE) == 0
            finally:
                redis_client.config_set("maxmemory", 0)
            for _, message in got:  # type: ignore[misc]
                message.ack()  # (kombu's acks are MULTI pipelines, which a full Redis refuses too)
    assert redis_client.hlen("unacked") == 0


def test_a_payload_lua_cannot_read_is_taken_by_python(url: str, redis_client: redis.Redis) -> None:
    # Python's json writes a lone surrogate as an escape that Redis's cjson refuses (Celery's
    # argsrepr of a job with such text, which the worker must still take and end)
    _publish(url, {"n": 1}, headers={"argsrepr": "\udfff"})
    assert b"\\udfff" in (redis_client.lindex(QUEUE, 0) or b"")
    with _connection(url) as conn:
        message = conn.channel().basic_get(QUEUE)
        assert message is not None and message.payload == {"n": 1}
        assert message.headers["argsrepr"] == "\udfff"
        assert redis_client.llen(QUEUE) == 0 and redis_client.hexists("unacked", message.delivery_tag)
        payload, exchange, _ = json.loads(redis_client.hget("unacked", message.delivery_tag) or b"")
        assert payload["headers"]["argsrepr"] == "\udfff" and exchange == QUEUE
        message.ack()
    assert redis_client.hlen("unacked") == 0 and redis_client.zcard("unacked_index") == 0

"""The broker's atomic fetch (workers/runtime/broker.py) on a real Redis, through kombu's own API.

A fetched message is in ``unacked`` + ``unacked_index`` and no longer in its queue, in one step; a
channel that took a message and died before delivering it leaves it there, and kombu's restore of
aged entries returns it; a live holder's heartbeat keeps it. One fetch takes a batch (up to the
prefetch credit, at most ``fetch_batch``) in the order single fetches would, and every message of it
stays recorded, and heartbeated until delivered. Entries are aged through the channel's clock seam,
not by sleeping: the tests assert counts and contents, never durations.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from queue import Empty
from typing import Any

import pytest
import redis
from kombu import Connection, Consumer, Exchange, Queue
from kombu.transport import redis as kombu_redis

from tests.support.fullredis import FullRedis
from tests.support.waits import until
from workers.connections.schedtransport import SchedulingTransport
from workers.connections.schedule import FETCH, RELEASE, bell_key, script, tenant_list
from workers.runtime.broker import MALFORMED_KEY, REFILL_POLL_S, Channel, Poller, Transport

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


def _publish(url: str, body: object, *, headers: dict[str, object] | None = None, plain: bool = False) -> None:
    """Send a job as producers do (into the queue's schedule), or with kombu's own transport (``plain``:
    onto the queue's list, as a producer without the scheduling transport would)."""
    transport = kombu_redis.Transport if plain else SchedulingTransport
    headers = {"llmq": {"priority": "normal", "tenant": "default"}, **(headers or {})}
    with Connection(url, transport=transport) as conn, conn.Producer() as producer:
        producer.publish(
            body, exchange=EXCHANGE, routing_key=QUEUE, declare=[KOMBU_QUEUE], serializer="json", headers=headers
        )


#: The schedule's list of the test's messages (class normal, tenant default).
DEFAULT_LIST = tenant_list(QUEUE, "normal", "default")


def _queued(r: redis.Redis, queue: str = QUEUE) -> int:
    """Messages the queue holds (its schedule and its list), as kombu's queue size reports them."""
    with Connection(_url(r), transport=Transport) as conn:
        return int(conn.default_channel._size(queue))


def _url(r: redis.Redis) -> str:
    kwargs = r.connection_pool.connection_kwargs
    return f"redis://{kwargs['host']}:{kwargs['port']}/{kwargs.get('db', 0)}"


@pytest.fixture
def url(redis_url: str) -> Iterator[str]:
    yield redis_url


def _aged(channel: Channel) -> None:
    """Make this channel's fetches score their entries far in the past (older than any timeout)."""
    channel.clock = lambda: time.time() - 3600  # type: ignore[method-assign]


def test_a_fetched_message_is_in_unacked_and_not_in_the_queue(url: str, redis_client: redis.Redis) -> None:
    _publish(url, {"n": 1})
    assert _queued(redis_client) == 1
    with _connection(url) as conn:
        channel = conn.channel()
        message = channel.basic_get(QUEUE)
        assert message is not None and message.payload == {"n": 1}
        tag = message.delivery_tag
        assert _queued(redis_client) == 0
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
        assert _queued(redis_client) == 0 and redis_client.hlen("unacked") == 3
        for _, message in got:  # type: ignore[misc]
            message.ack()
        assert redis_client.hlen("unacked") == 0 and redis_client.zcard("unacked_index") == 0


def test_a_channel_that_stopped_taking_leaves_what_arrives_in_the_queue(url: str, redis_client: redis.Redis) -> None:
    """A leaving worker (``stop_taking``, its shutdown) wakes on a message, e.g. the job it has just
    handed back, and leaves it queued for another worker (what the fetch sent behind its wait took goes
    back at once); it still holds what it took before, and the bell rings again, so the next worker
    with room is woken (not left to its timed sweep)."""
    _publish(url, {"n": 0})
    got: list[object] = []
    with _connection(url) as conn:
        channel = conn.channel()
        with Consumer(channel, [KOMBU_QUEUE], callbacks=[lambda body, message: got.append(body)]):
            conn.drain_events(timeout=10)
            assert got == [{"n": 0}] and redis_client.hlen("unacked") == 1
            channel._brpop_start()  # a wait in flight when the shutdown begins: it takes the token
            assert channel._wait_commands == ("BLPOP", "EVALSHA")  # and the fetch behind it, the job
            channel.stop_taking()
            _publish(url, {"n": 1})
            with pytest.raises(Empty):
                channel._brpop_read()
            assert redis_client.llen(bell_key(QUEUE)) == 1  # put back for the next consumer
            with pytest.raises(socket.timeout):
                for _ in range(3):  # later waits take neither the token nor the message
                    conn.drain_events(timeout=1)
        assert got == [{"n": 0}]
        # queued in the schedule (not kombu's list: producers queue there), the wake-up handed on
        assert _queued(redis_client) == 1 and redis_client.llen(DEFAULT_LIST) == 1
        assert redis_client.llen(bell_key(QUEUE)) == 1
        assert redis_client.hlen("unacked") == 1


def test_a_channel_that_died_after_the_fetch_gets_its_message_restored(url: str, redis_client: redis.Redis) -> None:
    _publish(url, {"job": "survives"})
    with _connection(url, DyingTransport) as dying:
        channel = dying.channel()
        _aged(channel)
        with Consumer(channel, [KOMBU_QUEUE], callbacks=[lambda *_: None]), pytest.raises(Died) as died:
            dying.drain_events(timeout=10)
        tag = str(died.value)
        # the instant after the script: in the bookkeeping, in no queue, held by nobody
        assert _queued(redis_client) == 0
        assert redis_client.hexists("unacked", tag) and redis_client.zscore("unacked_index", tag) is not None
        assert not channel.qos._delivered
        channel.do_restore = False  # it died: no restore at close
    with _connection(url) as conn:
        channel = conn.channel()
        channel.qos.restore_visible(num=10, interval=1)  # what every consumer runs every few seconds
        assert redis_client.hlen("unacked") == 0 and redis_client.zcard("unacked_index") == 0
        assert _queued(redis_client) == 1
        message = channel.basic_get(QUEUE)
        assert message is not None and message.payload == {"job": "survives"}
        assert message.delivery_info["redelivered"] is True
        assert message.delivery_tag != tag  # re-tagged on restore (a late ack of the old tag is harmless)
        message.ack()


def test_a_consumer_without_an_event_loop_restores_aged_messages_though_every_wait_answers(
    url: str, redis_client: redis.Redis
) -> None:
    """gevent and eventlet workers drain events without an event loop (Celery's synloop): kombu
    sweeps for aged messages there only after a poll in which nothing answered, and the bells' wait
    answers (times out) before every poll does, so a worker left in ``unacked`` was never restored
    (seen: jobs left by a worker stopped while Redis was full waited forever under gevent). The
    poller sweeps every ``unacked_restore_interval`` seconds whatever the poll saw."""
    _publish(url, {"job": "left"})
    with _connection(url, DyingTransport) as dying:
        channel = dying.channel()
        _aged(channel)
        with Consumer(channel, [KOMBU_QUEUE], callbacks=[lambda *_: None]), pytest.raises(Died):
            dying.drain_events(timeout=10)
        channel.do_restore = False  # it died: no restore at close
    assert _queued(redis_client) == 0 and redis_client.hlen("unacked") == 1
    got: list[Any] = []
    # the wait times out every 0.2 s, well inside each 2 s drain: every poll sees an answer
    with _connection(url, sweep_s=0.2, unacked_restore_interval=1) as conn:
        consumer = _consumer(conn.channel(), got)
        with consumer:
            for _ in range(5):  # the first sweep comes one interval after the start
                try:
                    conn.drain_events(timeout=2)
                except TimeoutError:
                    continue
                break
            assert _bodies(got) == [{"job": "left"}]
            assert got[0][1].delivery_info["redelivered"] is True
            got[0][1].ack()
    assert redis_client.hlen("unacked") == 0 and _queued(redis_client) == 0


def test_a_live_holder_keeps_its_message_through_a_restore(url: str, redis_client: redis.Redis) -> None:
    _publish(url, {"job": "held"})
    with _connection(url) as owner, _connection(url) as other:
        held = owner.channel()
        _aged(held)
        message = held.basic_get(QUEUE)
        assert message is not None
        assert held.refresh_unacked() == 1  # the heartbeat: the aged entry is re-scored to now
        other.channel().qos.restore_visible(num=10, interval=1)
        assert _queued(redis_client) == 0 and redis_client.hlen("unacked") == 1
        message.ack()


def test_one_message_two_fetchers_one_wins(url: str, redis_client: redis.Redis) -> None:
    _publish(url, {"n": 1})
    with _connection(url) as a, _connection(url) as b:
        first, second = a.channel(), b.channel()
        assert first.fetch([QUEUE]) is not None
        assert second.fetch([QUEUE]) is None
        assert redis_client.hlen("unacked") == 1 and _queued(redis_client) == 0


def test_a_message_on_the_queues_own_list_joins_the_schedule_and_is_taken(url: str, redis_client: redis.Redis) -> None:
    _publish(url, {"scheduled": False}, plain=True)  # a producer without the scheduling transport
    _publish(url, {"scheduled": True})
    assert redis_client.llen(QUEUE) == 1 and redis_client.llen(DEFAULT_LIST) == 1
    got: list[object] = []
    with _connection(url) as conn:
        channel = conn.channel()
        with Consumer(channel, [KOMBU_QUEUE], callbacks=[lambda body, message: got.append((body, message))]):
            while len(got) < 2:
                conn.drain_events(timeout=10)
        assert sorted(str(body) for body, _ in got) == ["{'scheduled': False}", "{'scheduled': True}"]  # type: ignore[misc]
        assert redis_client.hlen("unacked") == 2 and redis_client.llen(QUEUE) == 0
        for _, message in got:  # type: ignore[misc]
            message.ack()


def test_an_unreadable_payload_is_set_aside_not_lost(url: str, redis_client: redis.Redis) -> None:
    _publish(url, {"n": 1})
    redis_client.rpush(DEFAULT_LIST, b"not json")  # the tail: taken first
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
    assert redis_client.hlen("unacked") == 0 and _queued(redis_client) == 0


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
                assert redis_client.hlen("unacked") == 2 and _queued(redis_client) == 0
            finally:
                redis_client.config_set("maxmemory", 0)
            for _, message in got:  # type: ignore[misc]
                message.ack()  # (kombu's acks are MULTI pipelines, which a full Redis refuses too)
    assert redis_client.hlen("unacked") == 0


def test_a_payload_lua_cannot_read_is_taken_by_python(url: str, redis_client: redis.Redis) -> None:
    # Python's json writes a lone surrogate as an escape that Redis's cjson refuses (Celery's
    # argsrepr of a job with such text, which the worker must still take and end)
    _publish(url, {"n": 1}, headers={"argsrepr": "\udfff"})
    assert b"\\udfff" in (redis_client.lindex(DEFAULT_LIST, 0) or b"")
    with _connection(url) as conn:
        message = conn.channel().basic_get(QUEUE)
        assert message is not None and message.payload == {"n": 1}
        assert message.headers["argsrepr"] == "\udfff"
        assert _queued(redis_client) == 0 and redis_client.hexists("unacked", message.delivery_tag)
        payload, exchange, _ = json.loads(redis_client.hget("unacked", message.delivery_tag) or b"")
        assert payload["headers"]["argsrepr"] == "\udfff" and exchange == QUEUE
        message.ack()
    assert redis_client.hlen("unacked") == 0 and redis_client.zcard("unacked_index") == 0


# -- batches: one fetch takes up to the prefetch credit (at most ``fetch_batch``) ---------------------

#: the heartbeat only when a test calls ``refresh_unacked`` (its thread would re-score aged entries)
NO_BEAT = {"heartbeat_interval": 3600}


def _script_calls(r: redis.Redis) -> int:
    """How many fetch scripts Redis ran (``EVALSHA``; the script is loaded first, so no fallback)."""
    return int(r.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0))  # type: ignore[union-attr]


def _bodies(got: list[tuple[Any, Any]]) -> list[Any]:
    return [body for body, _ in got]


def _consumer(channel: Any, got: list[tuple[Any, Any]], *, prefetch: int | None = None, queues: Any = None) -> Consumer:
    return Consumer(
        channel,
        queues or [KOMBU_QUEUE],
        callbacks=[lambda body, message: got.append((body, message))],
        prefetch_count=prefetch,
    )


def test_a_batch_takes_the_credit_in_order_and_leaves_the_rest_queued(url: str, redis_client: redis.Redis) -> None:
    for n in range(10):
        _publish(url, {"n": n})
    redis_client.script_load(script(FETCH))
    got: list[tuple[Any, Any]] = []
    with _connection(url, **NO_BEAT) as conn:
        channel = conn.channel()
        with _consumer(channel, got, prefetch=3):
            calls = _script_calls(redis_client)
            conn.drain_events(timeout=10)  # one read of the wait: one script, the whole credit
            assert _script_calls(redis_client) - calls == 1
            assert _bodies(got) == [{"n": 0}, {"n": 1}, {"n": 2}]
            assert _queued(redis_client) == 7
            assert redis_client.hlen("unacked") == 3 and redis_client.zcard("unacked_index") == 3
            assert list(channel.qos._delivered) == [m.delivery_tag for _, m in got]
            got[0][1].ack()  # one credit back: the next fetch takes exactly one
            conn.drain_events(timeout=10)
            assert _bodies(got)[3:] == [{"n": 3}] and _queued(redis_client) == 6
            for _, message in got[1:]:
                message.ack()
            got.clear()
            conn.drain_events(timeout=10)
            assert _bodies(got) == [{"n": n} for n in (4, 5, 6)] and _queued(redis_client) == 3
            for _, message in got:
                message.ack()
    assert redis_client.hlen("unacked") == 0  # nothing held at close


def _wait_calls(r: redis.Redis) -> dict[str, int]:
    """Waits on the bells (``BLPOP``) and scripts (``EVALSHA``) Redis ran so far."""
    stats = r.info("commandstats")
    return {name: int(stats.get(f"cmdstat_{name}", {}).get("calls", 0)) for name in ("blpop", "evalsha")}  # type: ignore[union-attr]


def _since(r: redis.Redis, before: dict[str, int]) -> dict[str, int]:
    return {name: n - before[name] for name, n in _wait_calls(r).items()}


def test_a_freed_slot_is_refilled_by_the_fetch_alone_while_work_is_left(url: str, redis_client: redis.Redis) -> None:
    """A fetch that left work queued makes the consumer's next wait with room the fetch itself: one
    round trip per refill (was a wait on the bells, answered at once by their token, then the fetch).
    The fetch that takes the last message leaves no token behind: the next wait blocks on the bells."""
    for n in range(5):
        _publish(url, {"n": n})
    redis_client.script_load(script(FETCH))
    got: list[tuple[Any, Any]] = []
    # no timed sweep for aged messages (kombu's, scripts of its own) during the test
    with _connection(url, unacked_restore_interval=3600, **NO_BEAT) as conn:
        channel = conn.channel()
        with _consumer(channel, got, prefetch=2):
            before = _wait_calls(redis_client)
            conn.drain_events(timeout=10)  # the first: woken by the bells' token, then a fetch
            assert _since(redis_client, before) == {"blpop": 1, "evalsha": 1}
            assert _bodies(got) == [{"n": 0}, {"n": 1}]
            for n in (2, 3, 4):
                got.pop(0)[1].ack()  # a slot frees: refilled by one fetch, no wait on the bells
                before = _wait_calls(redis_client)
                conn.drain_events(timeout=10)
                assert _since(redis_client, before) == {"blpop": 0, "evalsha": 1}, n
                assert _bodies(got)[-1] == {"n": n}
            assert _queued(redis_client) == 0 and redis_client.llen(bell_key(QUEUE)) == 0  # no token left
            for _, message in got:
                message.ack()  # (each ack's release is a script too)
            before = _wait_calls(redis_client)
            with pytest.raises(socket.timeout):
                conn.drain_events(timeout=0.3)  # nothing left: waits on the bells
            assert _since(redis_client, before)["blpop"] == 1
            _publish(url, {"n": 5})  # a new job rings: the wait wakes and fetches it
            conn.drain_events(timeout=10)
            assert _bodies(got)[-1] == {"n": 5}
            got[-1][1].ack()


#: What the counting channels' connections wrote to Redis: one entry per write (a ``sendall`` of
#: redis-py's), the names of the commands it carried.
WRITES: list[list[str]] = []


class CountingConnection(redis.Connection):
    """A connection that notes each write it makes (a seam: kombu's ``connection_class``)."""

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        for chunk in [command] if isinstance(command, bytes | str) else command:
            data = chunk.encode() if isinstance(chunk, str) else bytes(chunk)
            # each command: *<argc>, then its name as the first bulk string
            WRITES.append([name.decode().upper() for name in re.findall(rb"\*\d+\r\n\$\d+\r\n([A-Za-z]+)\r\n", data)])
        super().send_packed_command(command, check_health)


class CountingChannel(Channel):
    connection_class = CountingConnection


class CountingTransport(Transport):
    Channel = CountingChannel


def _publish_once_waiting(url: str, r: redis.Redis, body: object) -> threading.Thread:
    """Publish ``body`` as soon as a client blocks in its wait on the bells (a thread: the test's own
    blocks meanwhile in ``drain_events``)."""

    def publish() -> None:
        until(lambda: int(r.info("clients")["blocked_clients"]) == 1, "the consumer waits on the bells", 10)
        _publish(url, body)

    thread = threading.Thread(target=publish, name="test-publisher", daemon=True)
    thread.start()
    return thread


def test_a_job_that_wakes_an_idle_consumer_is_taken_in_the_wake_ups_round_trip(
    url: str, redis_client: redis.Redis
) -> None:
    """An idle consumer sends the fetch behind its wait on the bells, in the same write: Redis runs it
    the moment a job's token ends the wait, and both replies come back together. One write and one
    round trip per wake-up (was the wait, then after its reply the fetch, a second write and round
    trip); the same commands run, in the same order."""
    redis_client.script_load(script(FETCH))
    got: list[tuple[Any, Any]] = []
    # the wait blocks until the job comes (no timed sweep ends it first, whatever the machine's load)
    options = {"sweep_s": 60, "unacked_restore_interval": 3600, **NO_BEAT}
    with _connection(url, CountingTransport, **options) as conn:
        channel = conn.channel()
        with _consumer(channel, got, prefetch=2):
            for n in range(3):  # the first connects (its handshake's writes): counted from the second on
                WRITES.clear()
                before = _wait_calls(redis_client)
                publisher = _publish_once_waiting(url, redis_client, {"n": n})
                conn.drain_events(timeout=30)
                publisher.join(10)
                assert _bodies(got) == [{"n": i} for i in range(n + 1)]
                assert _since(redis_client, before)["blpop"] == 1  # (the publisher's scripts are EVALSHAs too)
                if n:
                    assert WRITES == [["BLPOP", "EVALSHA"]], n
                assert redis_client.hlen("unacked") == 1 and _queued(redis_client) == 0
                assert redis_client.llen(bell_key(QUEUE)) == 0  # the fetch took the last: no token left
                got[-1][1].ack()
    assert redis_client.hlen("unacked") == 0


def test_a_wake_ups_fetch_redis_does_not_know_is_sent_again_after_it(url: str, redis_client: redis.Redis) -> None:
    """Scripts flushed (a Redis restarted) while the consumer idles: the fetch behind its wait answers
    ``NOSCRIPT``, read in its turn (the connection stays in step), and the consumer fetches the job
    the ordinary way (redis-py loads the script); the next wake-up is one write again."""
    got: list[tuple[Any, Any]] = []
    with _connection(url, CountingTransport, sweep_s=60, unacked_restore_interval=3600, **NO_BEAT) as conn:
        channel = conn.channel()
        with _consumer(channel, got, prefetch=2):
            _publish(url, {"n": 0})
            conn.drain_events(timeout=10)  # (connects, loads the script)
            got[0][1].ack()
            redis_client.script_flush()
            WRITES.clear()
            publisher = _publish_once_waiting(url, redis_client, {"n": 1})
            conn.drain_events(timeout=30)
            publisher.join(10)
            assert _bodies(got) == [{"n": 0}, {"n": 1}]
            # the wait and its fetch (NOSCRIPT), then the fetch again: EVALSHA, SCRIPT LOAD, EVALSHA
            assert WRITES[0] == ["BLPOP", "EVALSHA"] and ["SCRIPT"] in WRITES[1:]
            got[1][1].ack()
            WRITES.clear()
            publisher = _publish_once_waiting(url, redis_client, {"n": 2})
            conn.drain_events(timeout=30)
            publisher.join(10)
            assert _bodies(got)[2:] == [{"n": 2}] and WRITES == [["BLPOP", "EVALSHA"]]
            got[2][1].ack()
    assert redis_client.hlen("unacked") == 0 and _queued(redis_client) == 0


def test_a_wake_ups_fetch_read_once_the_window_shrank_to_full_gives_back_what_it_took(
    url: str, redis_client: redis.Redis
) -> None:
    """The fetch behind a wait takes up to the credit of the moment it was sent. If the prefetch window
    shrinks to full before the reply is read (Celery lowers its prefetch count once an ETA task it held
    starts), kombu would leave the reply unread until a slot frees, its messages taken and re-scored by
    no one; the reply is read at once and what the fetch took goes back to the queue, delivered later."""
    got: list[tuple[Any, Any]] = []
    with _connection(url, sweep_s=60, unacked_restore_interval=3600, **NO_BEAT) as conn:
        channel = conn.channel()
        with _consumer(channel, got, prefetch=2):
            _publish(url, {"n": 0})
            conn.drain_events(timeout=10)  # one held: credit 1
            assert _bodies(got) == [{"n": 0}]
            with pytest.raises(socket.timeout):
                conn.drain_events(timeout=0.2)  # the wait (and its fetch, limit 1) is in flight
            assert channel.fetch_in_flight()
            _publish(url, {"n": 1})
            until(lambda: redis_client.hlen("unacked") == 2, "the wake-up's fetch took the job", 10)
            channel.qos.prefetch_count = 1  # the window shrinks: full with the one held
            with pytest.raises(socket.timeout):
                conn.drain_events(timeout=0.5)
            assert not channel.fetch_in_flight()  # read, not left in the socket
            assert _bodies(got) == [{"n": 0}]
            assert redis_client.hlen("unacked") == 1 and _queued(redis_client) == 1  # back in the queue
            got[0][1].ack()  # a slot frees: the job comes (given back: redelivered)
            conn.drain_events(timeout=10)
            assert _bodies(got)[1:] == [{"n": 1}] and got[1][1].delivery_info["redelivered"] is True
            got[1][1].ack()
    assert redis_client.hlen("unacked") == 0 and _queued(redis_client) == 0


def test_a_job_the_wake_ups_fetch_took_while_the_channel_closes_goes_back(url: str, redis_client: redis.Redis) -> None:
    """A channel that closes with its wait (and the fetch behind it) in flight reads the replies: a job
    the fetch took there is given back to the queue at once, delivered to no one, held by no one, and
    the bell rings for the next consumer."""
    got: list[tuple[Any, Any]] = []
    with _connection(url, sweep_s=60, unacked_restore_interval=3600, **NO_BEAT) as conn:
        channel = conn.channel()
        with _consumer(channel, got, prefetch=2):
            _publish(url, {"n": 0})
            conn.drain_events(timeout=10)  # (connects, loads the script)
            got[0][1].ack()
            channel._brpop_start()  # idle: the wait and the fetch behind it
            assert channel._wait_commands == ("BLPOP", "EVALSHA")
            _publish(url, {"n": 1})
            until(lambda: _queued(redis_client) == 0, "the wake-up's fetch took the job", 10)
            assert redis_client.hlen("unacked") == 1
    assert _bodies(got) == [{"n": 0}]
    assert _queued(redis_client) == 1 and redis_client.hlen("unacked") == 0
    assert redis_client.llen(bell_key(QUEUE)) == 1


def test_a_fetch_in_flight_when_the_worker_stops_taking_gives_its_messages_back(
    url: str, redis_client: redis.Redis
) -> None:
    """The wait that is a fetch (work was left, a slot freed) has taken its messages when its reply
    comes: if the worker stopped taking meanwhile (its shutdown), they go back to the queue at once,
    delivered to no one, nothing left held; and a channel that closes with that fetch in flight does
    the same."""
    for n in range(4):
        _publish(url, {"n": n})
    got: list[tuple[Any, Any]] = []
    with _connection(url, unacked_restore_interval=3600, **NO_BEAT) as conn:
        channel = conn.channel()
        with _consumer(channel, got, prefetch=1):
            conn.drain_events(timeout=10)
            assert _bodies(got) == [{"n": 0}] and channel._more
            got[0][1].ack()
            channel._brpop_start()  # the refill's fetch, in flight when the shutdown begins
            assert channel._wait_commands == ("EVALSHA",)
            channel.stop_taking()
            with pytest.raises(Empty):
                channel._brpop_read()
            assert _bodies(got) == [{"n": 0}]
            assert _queued(redis_client) == 3 and redis_client.hlen("unacked") == 0
            channel.taking = True  # (as a channel that still takes, to close with a fetch in flight)
            channel._brpop_start()
            assert channel._wait_commands == ("EVALSHA",)
    assert _bodies(got) == [{"n": 0}]
    assert _queued(redis_client) == 3 and redis_client.hlen("unacked") == 0


def test_without_a_prefetch_limit_a_batch_is_fetch_batch(url: str, redis_client: redis.Redis) -> None:
    for n in range(10):
        _publish(url, {"n": n})
    got: list[tuple[Any, Any]] = []
    with _connection(url, fetch_batch=4, **NO_BEAT) as conn:
        channel = conn.channel()
        assert channel.qos.can_consume_max_estimate() is None  # prefetch 0: no credit limit
        with _consumer(channel, got):
            conn.drain_events(timeout=10)
            assert _bodies(got) == [{"n": n} for n in range(4)] and _queued(redis_client) == 6
            for _, message in got:
                message.ack()


def test_fetch_batch_1_takes_one_message_per_fetch(url: str, redis_client: redis.Redis) -> None:
    for n in range(4):
        _publish(url, {"n": n})
    redis_client.script_load(script(FETCH))
    got: list[tuple[Any, Any]] = []
    with _connection(url, fetch_batch=1, **NO_BEAT) as conn:
        channel = conn.channel()
        with _consumer(channel, got, prefetch=10):
            for n in range(4):
                calls = _script_calls(redis_client)
                conn.drain_events(timeout=10)
                assert _script_calls(redis_client) - calls == 1
                assert _bodies(got) == [{"n": i} for i in range(n + 1)]
                assert _queued(redis_client) == 3 - n
            for _, message in got:
                message.ack()


def _two_queues_order(url: str, r: redis.Redis, fetch_batch: int) -> tuple[list[tuple[str, Any]], int]:
    """Publish the same mix (two queues) and consume it all: the order of delivery and how many reads
    of the wait it took."""
    queues = [Queue(name, EXCHANGE, routing_key=name, durable=True) for name in ("fa", "fb")]
    with _connection(url) as conn, conn.Producer() as producer:
        for name, n in [("fa", 0), ("fb", 0), ("fa", 1), ("fa", 2), ("fa", 3)]:
            body = {"q": name, "n": n}
            producer.publish(body, exchange=EXCHANGE, routing_key=name, declare=queues, headers={"llmq": {}})
        for n in (1, 2):
            producer.publish({"q": "fb", "n": n}, exchange=EXCHANGE, routing_key="fb", declare=queues)
    got: list[tuple[Any, Any]] = []
    reads = 0
    options = {"fetch_batch": fetch_batch, "polling_interval": 0.05, **NO_BEAT}
    with _connection(url, **options) as conn:
        channel = conn.channel()
        with _consumer(channel, got, queues=queues):
            while len(got) < 7:
                conn.drain_events(timeout=10)
                reads += 1
        order = [(m.delivery_info["routing_key"], body["n"]) for body, m in got]
        for _, message in got:
            message.ack()
    assert r.hlen("unacked") == 0 and _queued(r, "fa") == 0 and _queued(r, "fb") == 0
    return order, reads


def test_a_batch_takes_the_order_single_fetches_take(url: str, redis_client: redis.Redis) -> None:
    single, single_reads = _two_queues_order(url, redis_client, fetch_batch=1)
    batched, batched_reads = _two_queues_order(url, redis_client, fetch_batch=32)
    assert batched == single  # the queues of the round-robin cycle, FIFO in each
    assert ("fa", 0) in single and ("fb", 2) in single and len(set(single)) == 7
    assert single_reads >= 7 and batched_reads == 1


def test_a_channel_that_died_after_fetching_a_batch_gets_all_of_it_restored(
    url: str, redis_client: redis.Redis
) -> None:
    for n in range(5):
        _publish(url, {"n": n})
    with _connection(url, DyingTransport, **NO_BEAT) as dying:
        channel = dying.channel()
        _aged(channel)
        with _consumer(channel, [], prefetch=10), pytest.raises(Died):
            dying.drain_events(timeout=10)
        # the instant after the script: all five recorded, none queued, none held
        assert _queued(redis_client) == 0
        assert redis_client.hlen("unacked") == 5 and redis_client.zcard("unacked_index") == 5
        assert not channel.qos._delivered and not channel.fetched_tags()  # no heartbeat keeps them
        channel.do_restore = False  # it died: no restore at close
    _assert_all_restored(url, redis_client, 5)


def _assert_all_restored(url: str, r: redis.Redis, count: int) -> None:
    with _connection(url) as conn:
        channel = conn.channel()
        channel.qos.restore_visible(num=10, interval=1)  # what every consumer runs every few seconds
        assert r.hlen("unacked") == 0 and r.zcard("unacked_index") == 0
        assert _queued(r) == count
        bodies = []
        for _ in range(count):
            message = channel.basic_get(QUEUE)
            assert message is not None and message.delivery_info["redelivered"] is True
            bodies.append(message.payload)
            message.ack()
        assert sorted(body["n"] for body in bodies) == list(range(count))


def test_a_process_killed_mid_batch_leaves_the_undelivered_ones_to_age_and_be_restored(
    url: str, redis_client: redis.Redis
) -> None:
    for n in range(5):
        _publish(url, {"n": n})
    seen: list[Any] = []

    def dies_at_the_second(body: Any, message: Any) -> None:
        seen.append(body)
        if len(seen) == 2:
            raise Died()  # a SIGKILL while the batch is being delivered: nothing after it runs

    with _connection(url, **NO_BEAT) as conn:
        channel = conn.channel()
        _aged(channel)
        consumer = Consumer(channel, [KOMBU_QUEUE], callbacks=[dies_at_the_second], prefetch_count=10)
        with consumer, pytest.raises(Died):
            conn.drain_events(timeout=10)
        assert seen == [{"n": 0}, {"n": 1}]
        assert _queued(redis_client) == 0 and redis_client.hlen("unacked") == 5  # 2 delivered, 3 not
        channel.do_restore = False
    _assert_all_restored(url, redis_client, 5)


def test_the_heartbeat_covers_a_batchs_messages_not_yet_delivered(url: str, redis_client: redis.Redis) -> None:
    for n in range(4):
        _publish(url, {"n": n})
    seen: list[tuple[int, int, int, int]] = []
    with _connection(url, **NO_BEAT) as conn, _connection(url) as other:
        channel = conn.channel()
        _aged(channel)  # fetched entries score an hour ago: without a beat, a restore takes them

        def delivering(body: Any, message: Any) -> None:
            # mid-batch: this one is held, the later ones are fetched and waiting to be delivered
            waiting = len(channel.fetched_tags())
            beaten = channel.refresh_unacked()
            other.channel().qos.restore_visible(num=10, interval=1)
            seen.append((waiting, beaten, _queued(redis_client), redis_client.hlen("unacked")))
            message.ack()

        with Consumer(channel, [KOMBU_QUEUE], callbacks=[delivering], prefetch_count=10):
            conn.drain_events(timeout=10)
    # at each delivery: 3, 2, 1, 0 still waiting, all re-scored with the one being delivered (the
    # acked ones are gone), and the restore took none of them
    assert seen == [(3, 4, 0, 4), (2, 3, 0, 3), (1, 2, 0, 2), (0, 1, 0, 1)]


def test_a_delivery_that_raises_gives_the_rest_of_the_batch_back_in_order(url: str, redis_client: redis.Redis) -> None:
    for n in range(5):
        _publish(url, {"n": n})
    got: list[tuple[Any, Any]] = []

    def fails_at_the_second(body: Any, message: Any) -> None:
        got.append((body, message))
        if len(got) == 2:
            raise RuntimeError("delivery failed")

    with _connection(url, **NO_BEAT) as conn:
        channel = conn.channel()
        with Consumer(channel, [KOMBU_QUEUE], callbacks=[fails_at_the_second], prefetch_count=10):
            with pytest.raises(RuntimeError):
                conn.drain_events(timeout=10)
            assert _bodies(got) == [{"n": 0}, {"n": 1}]
            # the two handed over stay recorded; the three never handed over are queued again
            assert redis_client.hlen("unacked") == 2 and _queued(redis_client) == 3
            assert not channel.fetched_tags()
            conn.drain_events(timeout=10)
        assert _bodies(got)[2:] == [{"n": 2}, {"n": 3}, {"n": 4}]  # next, in their order
        assert all(m.delivery_info["redelivered"] for _, m in got[2:])
        for _, message in got:
            message.ack()
    assert redis_client.hlen("unacked") == 0 and _queued(redis_client) == 0


def test_an_unreadable_payload_mid_batch_ends_it_and_is_set_aside(url: str, redis_client: redis.Redis) -> None:
    for n in range(2):
        _publish(url, {"n": n})
    redis_client.lpush(DEFAULT_LIST, b"not json")  # the head end: behind 0 and 1, before 2 and 3
    for n in range(2, 4):
        _publish(url, {"n": n})
    got: list[tuple[Any, Any]] = []
    with _connection(url, **NO_BEAT) as conn:
        channel = conn.channel()
        with _consumer(channel, got, prefetch=10):
            conn.drain_events(timeout=10)
            assert _bodies(got) == [{"n": 0}, {"n": 1}]  # the ones before it
            assert redis_client.lrange(MALFORMED_KEY, 0, -1) == [b"not json"]
            assert _queued(redis_client) == 2 and redis_client.hlen("unacked") == 2  # the rest: queued
            conn.drain_events(timeout=10)
            assert _bodies(got)[2:] == [{"n": 2}, {"n": 3}]  # taken by the next fetch
            for _, message in got:
                message.ack()
    assert redis_client.hlen("unacked") == 0 and _queued(redis_client) == 0


def test_a_payload_lua_cannot_read_mid_batch_is_claimed_after_the_ones_before(
    url: str, redis_client: redis.Redis
) -> None:
    for n in range(2):
        _publish(url, {"n": n})
    _publish(url, {"n": 2}, headers={"argsrepr": "\udfff"})  # cjson refuses it; Python reads it
    for n in range(3, 5):
        _publish(url, {"n": n})
    got: list[tuple[Any, Any]] = []
    with _connection(url, **NO_BEAT) as conn:
        channel = conn.channel()
        with _consumer(channel, got, prefetch=10):
            conn.drain_events(timeout=10)
            assert _bodies(got) == [{"n": 0}, {"n": 1}, {"n": 2}]  # claimed and delivered last
            assert got[2][1].headers["argsrepr"] == "\udfff"
            assert _queued(redis_client) == 2 and redis_client.hlen("unacked") == 3
            assert redis_client.llen(MALFORMED_KEY) == 0
            conn.drain_events(timeout=10)
            assert _bodies(got)[3:] == [{"n": 3}, {"n": 4}]
            for _, message in got:
                message.ack()
    assert redis_client.hlen("unacked") == 0 and redis_client.zcard("unacked_index") == 0


# -- a full prefetch window is re-checked within REFILL_POLL_S, not after the caller's timeout ----------


class _RecordingPoll:
    """kombu's poll object with every timeout it was asked to wait recorded."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.timeouts: list[float | None] = []

    def poll(self, timeout: float | None = None) -> Any:
        self.timeouts.append(timeout)
        return self.inner.poll(timeout)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_a_full_window_is_rechecked_within_the_refill_bound(url: str, redis_client: redis.Redis) -> None:
    """Celery's gevent loop drains with a 2 s timeout; with every slot busy kombu used to wait all of it
    before looking at its credit again, so a freed slot stayed empty for up to 2 s (why gevent
    prefetched twice its slots). The transport's poller waits at most REFILL_POLL_S while the window
    is full, and the message after an ack is taken by the next drain."""
    for n in range(2):
        _publish(url, {"n": n})
    got: list[tuple[Any, Any]] = []
    with _connection(url, **NO_BEAT) as conn:
        channel = conn.channel()
        assert isinstance(conn.transport.cycle, Poller)
        with _consumer(channel, got, prefetch=1):
            conn.drain_events(timeout=10)
            assert _bodies(got) == [{"n": 0}] and not channel.qos.can_consume()
            recorder = _RecordingPoll(conn.transport.cycle.poller)
            conn.transport.cycle.poller = recorder
            with pytest.raises(socket.timeout):
                conn.drain_events(timeout=0.3)  # full: nothing is taken, the wait is re-checked
            assert _bodies(got) == [{"n": 0}] and _queued(redis_client) == 1
            waits = [t for t in recorder.timeouts if t is not None]
            assert waits and max(waits) <= REFILL_POLL_S
            got[0][1].ack()
            conn.drain_events(timeout=10)
            assert _bodies(got) == [{"n": 0}, {"n": 1}]
            got[1][1].ack()


class _AckingPoll(_RecordingPoll):
    """Acks a message as its first wait starts (an ack from another greenlet while the window is full)
    and records what each wait returned."""

    def __init__(self, inner: Any, ack: Any) -> None:
        super().__init__(inner)
        self.ack = ack
        self.returned: list[Any] = []

    def poll(self, timeout: float | None = None) -> Any:
        if self.ack is not None:
            ack, self.ack = self.ack, None
            ack()
        events = super().poll(timeout)
        self.returned.append(events)
        return events


def test_an_ack_wakes_a_full_windows_wait_at_once(url: str, redis_client: redis.Redis) -> None:
    """A freed slot is not left for the next timed look at the credit: the ack wakes the wait itself."""
    for n in range(2):
        _publish(url, {"n": n})
    got: list[tuple[Any, Any]] = []
    with _connection(url, **NO_BEAT) as conn:
        channel = conn.channel()
        cycle = conn.transport.cycle
        with _consumer(channel, got, prefetch=1):
            conn.drain_events(timeout=10)
            assert _bodies(got) == [{"n": 0}] and not channel.qos.can_consume()
            recorder = _AckingPoll(cycle.poller, got[0][1].ack)
            cycle.poller = recorder
            conn.drain_events(timeout=10)  # woken by the ack, the drain takes the next message
            assert _bodies(got) == [{"n": 0}, {"n": 1}]
            assert cycle._wake is not None
            woke = [fd for events in recorder.returned for fd, _ in events or ()]
            assert woke[0] == cycle._wake[0]  # the full window's wait ended on the wake-up, not on its bound
            got[1][1].ack()
    assert not cycle._waiting_full


def _calls(redis_client: redis.Redis) -> dict[str, int]:
    """Scripts (the release) and ZREM calls the server has run so far (``INFO commandstats``)."""
    stats = redis_client.info("commandstats")
    return {name: int(stats.get(f"cmdstat_{name}", {}).get("calls", 0)) for name in ("evalsha", "zrem")}


def _held(redis_client: redis.Redis) -> tuple[int, int]:
    return int(redis_client.hlen("unacked")), int(redis_client.zcard("unacked_index"))


def test_batched_acks_free_the_credit_at_once_and_leave_redis_in_one_flush(url: str, redis_client: redis.Redis) -> None:
    for n in range(3):
        _publish(url, {"n": n})
    # a long window: the test flushes by hand, so nothing here depends on the flusher's timing
    with _connection(url, ack_flush_ms=60_000) as conn:
        channel = conn.channel()
        channel.basic_qos(prefetch_count=3)
        messages = [channel.basic_get(QUEUE) for _ in range(3)]
        assert all(m is not None for m in messages) and _held(redis_client) == (3, 3)
        assert not channel.qos.can_consume()
        messages[0].ack()
        messages[1].ack()
        # the credit is back, the bookkeeping waits for the flush
        assert channel.qos.can_consume() and set(channel.qos.held_tags()) == {messages[2].delivery_tag}
        assert channel.pending_acks() == [messages[0].delivery_tag, messages[1].delivery_tag]
        assert _held(redis_client) == (3, 3)
        assert channel.refresh_unacked() == 1  # the heartbeat no longer re-scores the acked ones
        # the release script cached, as in a worker after its first release: the count below is the
        # flush's, not a cold script cache's (a first call after a Redis start adds a NOSCRIPT EVALSHA
        # and SCRIPT LOAD, once); whether an earlier test ran a release must not matter
        redis_client.script_load(script(RELEASE))
        calls0 = _calls(redis_client)
        assert channel.flush_acks() == 2
        # one release script for both, removing each entry (the heartbeat thread only ever sends ZADD)
        assert {k: v - calls0.get(k, 0) for k, v in _calls(redis_client).items()} == {"evalsha": 1, "zrem": 2}
        assert _held(redis_client) == (1, 1) and channel.pending_acks() == []
        assert redis_client.hexists("unacked", messages[2].delivery_tag)
        messages[2].ack()
        assert channel.pending_acks() == [messages[2].delivery_tag]
    # closing the channel flushed the rest
    assert _held(redis_client) == (0, 0)


def test_the_flusher_writes_batched_acks_without_being_asked(url: str, redis_client: redis.Redis) -> None:
    _publish(url, {"n": 1})
    with _connection(url, ack_flush_ms=1) as conn:
        channel = conn.channel()
        message = channel.basic_get(QUEUE)
        assert message is not None
        message.ack()
        until(lambda: _held(redis_client) == (0, 0), "the flusher removed the acked entry", 10)
        assert channel.pending_acks() == []


def test_a_flush_redis_refuses_keeps_its_acks_for_the_next(url: str, redis_client: redis.Redis) -> None:
    for n in range(2):
        _publish(url, {"n": n})
    with _connection(url, ack_flush_ms=60_000) as conn:
        channel = conn.channel()
        first, second = channel.basic_get(QUEUE), channel.basic_get(QUEUE)
        assert first is not None and second is not None
        first.ack()
        client = channel._shared_client
        dead = socket.socket()
        dead.bind(("127.0.0.1", 0))  # a port nobody listens on
        channel._shared_client = redis.Redis(port=dead.getsockname()[1], socket_connect_timeout=1)
        try:
            with pytest.raises(redis.ConnectionError):
                channel.flush_acks()
        finally:
            channel._shared_client = client
            dead.close()
        second.ack()
        assert channel.pending_acks() == [first.delivery_tag, second.delivery_tag]  # kept, in order
        assert channel.flush_acks() == 2 and _held(redis_client) == (0, 0)


def test_without_a_window_each_ack_leaves_redis_at_once(url: str, redis_client: redis.Redis) -> None:
    _publish(url, {"n": 1})
    with _connection(url) as conn:
        channel = conn.channel()
        message = channel.basic_get(QUEUE)
        assert message is not None
        message.ack()
        assert channel.pending_acks() == [] and _held(redis_client) == (0, 0)


def test_a_binding_refresh_redis_refuses_at_maxmemory_logs_no_traceback(caplog: pytest.LogCaptureFixture) -> None:
    """An expiring queue's binding refresh (Celery's pidbox: every poll cycle) is a write: while Redis
    is full kombu logged it with a full traceback every second; the worker's channel says it in one
    quiet line and refreshes once Redis takes writes again."""
    with FullRedis(maxmemory_mb=16) as full, _connection(full.url) as conn:
        channel = conn.channel()
        queue = Queue("expiring", Exchange("expiring", type="fanout"), expires=60)
        queue.bind(channel).declare()
        channel._active_queues.append("expiring")
        full.fill(0.5)
        full.squeeze()
        with caplog.at_level("DEBUG"):
            conn.transport.cycle.maybe_refresh_binding_expiry()
        noisy = [r for r in caplog.records if r.exc_info and r.levelno >= 30]
        assert noisy == [], [r.getMessage() for r in noisy]
        full.free()
        channel._binding_expiry_refreshed_at = float("-inf")
        conn.transport.cycle.maybe_refresh_binding_expiry()  # taken now: no error
        assert channel._binding_expiry_refreshed_at != float("-inf")


def test_a_held_message_keeps_its_decoded_body_not_the_payload_as_queued(url: str, redis_client: redis.Redis) -> None:
    """kombu's message keeps the payload as queued (its body base64-encoded) beside the decoded body, for
    as long as the job runs; only kombu's own bookkeeping write needs it, which the fetch did. A held
    message still goes back to its queue whole: rejected, or restored as its channel closes."""
    job = {"text": "naïve " * 1000}
    _publish(url, job)
    _publish(url, job)
    got: list[tuple[Any, Any]] = []
    with _connection(url, **NO_BEAT) as conn:
        channel = conn.channel()
        with _consumer(channel, got, prefetch=2):
            while len(got) < 2:
                conn.drain_events(timeout=10)
            for body, message in got:
                assert channel.qos._delivered[message.delivery_tag] is message
                assert message._raw is None  # kombu's copy of the payload as queued
                assert body == job and json.loads(message.body) == job
            got[0][1].reject(requeue=True)
            assert _queued(redis_client) == 1 and redis_client.hlen("unacked") == 1
    # the other, never acked, is restored as its channel closes (from its unacked entry)
    assert _queued(redis_client) == 2 and redis_client.hlen("unacked") == 0
    got.clear()
    with _connection(url, **NO_BEAT) as conn:
        with _consumer(conn.channel(), got, prefetch=2):
            while len(got) < 2:
                conn.drain_events(timeout=10)
        assert _bodies(got) == [job, job]
        for _, message in got:
            message.ack()

"""The scheduler in Redis (workers/connections/lua) on a real Redis, through the transports' own calls.

Messages are queued as producers queue them (the scheduling transport) and taken as workers take
them (the worker channel's fetch): the tests assert which messages a fetch takes, in what order and
how many, and what stays queued, parked or held. Weights give exact proportions (stride
scheduling picks deterministically), so the proportions are asserted exactly, not statistically.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from kombu import Connection, Exchange, Queue

from producers.core import REGISTER_LUA, RESEND_AFTER_S
from workers.connections.schedtransport import SchedulingTransport
from workers.connections.schedule import (
    CONF_KEY,
    HELD_KEY,
    conf_fields,
    publish_conf,
    queue_prefix,
    script,
    tenant_list,
)
from workers.connections.schedview import queue_view
from workers.contract import JobKeys
from workers.runtime.broker import Channel, Fetched, Transport

QUEUE = "sched-test"
P = queue_prefix(QUEUE)
EXCHANGE = Exchange(QUEUE, "direct", durable=True)
KOMBU_QUEUE = Queue(QUEUE, EXCHANGE, routing_key=QUEUE, durable=True)


def _conf(r: redis.Redis, *, tenants: dict[str, dict[str, Any]] | None = None, **scheduling: Any) -> None:
    publish_conf(
        r,
        conf_fields(
            weights=scheduling.get("weights", {}),
            key_concurrency=scheduling.get("key_concurrency", 1),
            keys=scheduling.get("keys", {}),
            retry_after_s=scheduling.get("retry_after_s", 2.0),
            tenants=tenants or {},
        ),
    )


class Sender:
    """Queues messages as a producer does: scheduling header, job id, into the queue's schedule."""

    def __init__(self, url: str) -> None:
        self.conn = Connection(url, transport=SchedulingTransport)
        self.producer = self.conn.Producer()
        self.count = 0

    def send(self, tenant: str, priority: str = "normal", key: str | None = None, job_id: str | None = None) -> str:
        self.count += 1
        job_id = job_id or f"{tenant}-{priority}-{self.count}"
        header: dict[str, Any] = {"priority": priority, "tenant": tenant, "submitted_at": time.time()}
        if key is not None:
            header["concurrency_key"] = key
        self.producer.publish(
            {"id": job_id},
            exchange=EXCHANGE,
            routing_key=QUEUE,
            declare=[KOMBU_QUEUE],
            serializer="json",
            headers={"llmq": header, "id": job_id},
        )
        return job_id

    def close(self) -> None:
        self.producer.close()
        self.conn.close()


@pytest.fixture
def sender(redis_url: str) -> Iterator[Sender]:
    s = Sender(redis_url)
    yield s
    s.close()


@pytest.fixture
def channel(redis_url: str) -> Iterator[Channel]:
    with Connection(redis_url, transport=Transport, transport_options={"visibility_timeout": 3600}) as conn:
        ch = conn.channel()
        assert isinstance(ch, Channel)
        ch.do_restore = False  # held messages stay held at close: the tests look at them
        yield ch


def _ids(taken: list[Fetched]) -> list[str]:
    return [json.loads(f.payload)["headers"]["id"] for f in taken]


def _take(channel: Channel, n: int) -> list[Fetched]:
    taken, unreadable = channel.fetch_many([QUEUE], n)
    assert unreadable is None
    channel._fetched.clear()
    return taken


def _tenants(taken: list[Fetched]) -> list[str]:
    return [json.loads(f.payload)["headers"]["llmq"]["tenant"] for f in taken]


def _classes(taken: list[Fetched]) -> list[str]:
    return [json.loads(f.payload)["headers"]["llmq"]["priority"] for f in taken]


# --- shares -----------------------------------------------------------------------------------------


def test_tenants_share_a_class_by_weight_interleaved(
    redis_client: redis.Redis, sender: Sender, channel: Channel
) -> None:
    _conf(redis_client, tenants={"big": {"weight": 3}})
    for _ in range(60):
        sender.send("big")
    for _ in range(60):
        sender.send("small")  # unknown in the config: weight 1
    taken = _tenants(_take(channel, 40))
    assert Counter(taken) == {"big": 30, "small": 10}
    # interleaved, not in runs: every window of 4 picks holds 3 of one and 1 of the other
    for i in range(0, 40, 4):
        assert Counter(taken[i : i + 4]) == {"big": 3, "small": 1}, taken[i : i + 4]


def test_whatever_order_and_volume_a_tenant_submitted_in(
    redis_client: redis.Redis, sender: Sender, channel: Channel
) -> None:
    for _ in range(500):
        sender.send("flood")  # queued first, and far more
    for _ in range(5):
        sender.send("late")
    taken = _tenants(_take(channel, 10))
    assert Counter(taken) == {"flood": 5, "late": 5}  # equal weights: equal shares from its first pick on


def test_classes_share_by_weight_never_strictly(redis_client: redis.Redis, sender: Sender, channel: Channel) -> None:
    for _ in range(100):
        sender.send("t", "bulk")
    for _ in range(100):
        sender.send("t", "interactive")
    taken = _classes(_take(channel, 90))
    assert Counter(taken) == {"interactive": 80, "bulk": 10}  # 8 : 1 (the default weights)


def test_configured_class_weights_and_three_classes(
    redis_client: redis.Redis, sender: Sender, channel: Channel
) -> None:
    _conf(redis_client, weights={"interactive": 2, "normal": 2, "bulk": 1})
    for priority in ("bulk", "normal", "interactive"):
        for _ in range(50):
            sender.send("t", priority)
    taken = _classes(_take(channel, 50))
    assert Counter(taken) == {"interactive": 20, "normal": 20, "bulk": 10}


def test_capacity_a_class_does_not_use_goes_to_the_others(
    redis_client: redis.Redis, sender: Sender, channel: Channel
) -> None:
    for _ in range(20):
        sender.send("t", "bulk")
    sender.send("t", "interactive")
    taken = _classes(_take(channel, 21))
    assert taken.count("bulk") == 20 and taken.count("interactive") == 1
    assert _take(channel, 5) == []  # nothing left: a tenant or class with nothing queued takes nothing


def test_an_interactive_job_behind_a_bulk_backlog_is_next(
    redis_client: redis.Redis, sender: Sender, channel: Channel
) -> None:
    for _ in range(600):
        sender.send("bulk-tenant", "bulk")
    _take(channel, 30)  # the backlog runs
    web = sender.send("web", "interactive")
    assert _ids(_take(channel, 1)) == [web]


def test_a_tenant_gets_no_credit_for_the_time_it_had_nothing_queued(
    redis_client: redis.Redis, sender: Sender, channel: Channel
) -> None:
    for _ in range(100):
        sender.send("a")
    sender.send("b")
    _take(channel, 60)  # b's one job among them; then b has nothing queued while a runs on
    for _ in range(20):
        sender.send("b")
    taken = _tenants(_take(channel, 10))
    assert Counter(taken) == {"a": 5, "b": 5}  # b does not catch up on what a ran meanwhile


# --- caps ---------------------------------------------------------------------------------------------


def test_max_concurrency_leaves_the_tenant_out_until_a_slot_frees(
    redis_client: redis.Redis, sender: Sender, channel: Channel
) -> None:
    _conf(redis_client, tenants={"capped": {"max_concurrency": 2}})
    for _ in range(10):
        sender.send("capped")
    for _ in range(10):
        sender.send("other")
    taken = _take(channel, 8)
    assert Counter(_tenants(taken)) == {"capped": 2, "other": 6}  # the others take the remaining slots
    assert redis_client.scard(f"{P}run:t:capped") == 2
    assert redis_client.smembers(f"{P}blk:capped") == {b"normal"}
    assert Counter(_tenants(_take(channel, 10))) == {"other": 4}
    capped = [f.tag for f in taken if b'"capped"' in f.payload]
    redis_client.delete(f"{P}bell")
    channel.release(capped[:1])  # one slot frees: a note for the next fetch, and the bell rings
    assert redis_client.llen(f"{P}bell") == 1
    assert _tenants(_take(channel, 10)) == ["capped"]  # exactly one more
    channel.release(capped[1:])
    assert _tenants(_take(channel, 10)) == ["capped"]


def test_a_concurrency_key_parks_its_jobs_and_wakes_them_in_order(
    redis_client: redis.Redis, sender: Sender, channel: Channel
) -> None:
    doc = [sender.send("t", key="doc-1") for _ in range(3)]
    free = [sender.send("t") for _ in range(2)]
    taken = _take(channel, 10)
    assert _ids(taken) == [doc[0], *free]  # the two others ran past the parked ones
    assert redis_client.llen(f"{P}park:t:doc-1") == 2 and redis_client.hget(f"{P}parked", "t") == b"2"
    assert channel._size(QUEUE) == 2  # parked jobs are still queued
    redis_client.delete(f"{P}bell")
    channel.release([taken[0].tag])
    assert redis_client.llen(f"{P}bell") == 1  # woken, not polled
    first = _take(channel, 10)
    assert _ids(first) == [doc[1]]
    channel.release([first[0].tag])
    assert _ids(_take(channel, 10)) == [doc[2]]
    assert redis_client.hget(f"{P}parked", "t") == b"0" and not redis_client.exists(f"{P}park:t:doc-1")


def test_key_caps_come_from_the_key_the_pattern_the_tenant_and_the_default(
    redis_client: redis.Redis, sender: Sender, channel: Channel
) -> None:
    _conf(
        redis_client,
        key_concurrency=2,
        keys={"vip": 4, "doc:*": 3, "doc:big*": 5},
        tenants={"wide": {"key_concurrency": 6}},
    )
    for key, tenant in [("vip", "t"), ("doc:1", "t"), ("doc:big-1", "t"), ("user-1", "t"), ("user-1", "wide")]:
        for _ in range(10):
            sender.send(tenant, key=key)
    taken = _take(channel, 50)
    keys = Counter(
        (json.loads(f.payload)["headers"]["llmq"]["concurrency_key"], t)
        for f, t in zip(taken, _tenants(taken), strict=True)
    )
    assert keys == {
        ("vip", "t"): 4,
        ("doc:1", "t"): 3,
        ("doc:big-1", "t"): 5,
        ("user-1", "t"): 2,
        ("user-1", "wide"): 6,
    }


def test_one_key_of_two_tenants_is_two_keys(redis_client: redis.Redis, sender: Sender, channel: Channel) -> None:
    for tenant in ("a", "b"):
        for _ in range(3):
            sender.send(tenant, key="same")
    assert Counter(_tenants(_take(channel, 10))) == {"a": 1, "b": 1}


def test_a_restored_message_frees_its_slot_and_is_taken_next(
    redis_client: redis.Redis, sender: Sender, channel: Channel
) -> None:
    _conf(redis_client, tenants={"capped": {"max_concurrency": 1}})
    first = sender.send("capped")
    second = sender.send("capped")
    taken = _take(channel, 5)
    assert _ids(taken) == [first]
    channel.qos.restore_by_tag(taken[0].tag)  # what kombu does with a dead worker's aged entry
    assert redis_client.scard(f"{P}run:t:capped") == 0 and not redis_client.hexists(HELD_KEY, taken[0].tag)
    again = _take(channel, 5)
    assert _ids(again) == [first]  # back at the tail of its list: next, under a new tag
    assert again[0].tag != taken[0].tag
    channel.release([again[0].tag])
    assert _ids(_take(channel, 5)) == [second]


def test_held_and_running_bookkeeping_leaves_with_the_ack(
    redis_client: redis.Redis, sender: Sender, channel: Channel
) -> None:
    sender.send("t", key="k")
    taken = _take(channel, 1)
    tag = taken[0].tag
    assert redis_client.hget(HELD_KEY, tag) == f"{P}\tnormal\tt\tk".encode()
    channel.release([tag])
    assert not redis_client.hexists("unacked", tag) and not redis_client.zscore("unacked_index", tag)
    assert not redis_client.hexists(HELD_KEY, tag)
    assert not redis_client.exists(f"{P}run:t:t") and not redis_client.exists(f"{P}run:k:t:k")


# --- admission --------------------------------------------------------------------------------------


def _register(r: redis.Redis, job_id: str, tenant: str, stamp: float = 1000.0) -> Any:
    return r.register_script(REGISTER_LUA)(
        keys=[JobKeys(job_id).meta, P], args=[tenant, stamp, 3600, RESEND_AFTER_S, job_id]
    )


def test_max_queued_refuses_without_writing_anything(
    redis_client: redis.Redis, sender: Sender, channel: Channel
) -> None:
    _conf(redis_client, tenants={"t": {"max_queued": 3}}, retry_after_s=1.5)
    for n in range(2):
        assert _register(redis_client, f"q{n}", "t") == 1
        sender.send("t", job_id=f"q{n}")  # pushed: no longer pending, queued
    assert _register(redis_client, "q2", "t") == 1  # registered, its message not pushed yet: counts
    assert redis_client.zcard(f"{P}pending:t") == 1
    before = {k: redis_client.dump(k) for k in redis_client.keys("*")}
    assert _register(redis_client, "q3", "t") == [-1, 3, 3, b"1.5"]
    assert {k: redis_client.dump(k) for k in redis_client.keys("*")} == before  # nothing written
    assert _register(redis_client, "other-1", "other") == 1  # another tenant is not limited
    _take(channel, 1)  # one starts: room for one more
    assert _register(redis_client, "q3", "t") == 1


def test_a_registration_never_pushed_stops_counting(redis_client: redis.Redis) -> None:
    _conf(redis_client, tenants={"*": {"max_queued": 1}})
    redis_client.zadd(f"{P}pending:t", {"lost": 1.0})  # a producer died between register and send, long ago
    assert _register(redis_client, "fresh", "t") == 1


def test_register_for_a_queue_not_in_this_redis_skips_admission(redis_client: redis.Redis) -> None:
    _conf(redis_client, tenants={"t": {"max_queued": 1}})
    script_ = redis_client.register_script(REGISTER_LUA)
    for n in range(3):
        assert script_(keys=[JobKeys(f"r{n}").meta, ""], args=["t", 1000.0, 3600, RESEND_AFTER_S, f"r{n}"]) == 1


# --- robustness -------------------------------------------------------------------------------------


def test_a_full_redis_still_takes_and_releases(redis_client: redis.Redis, sender: Sender, channel: Channel) -> None:
    _conf(redis_client, tenants={"capped": {"max_concurrency": 1}})
    for _ in range(3):
        sender.send("capped", key="k")
    sender.send("free")
    redis_client.config_set("maxmemory", 1)  # noeviction: growing writes are refused
    try:
        with pytest.raises(redis.exceptions.OutOfMemoryError):
            redis_client.lpush("x", "y")
        taken = _take(channel, 10)  # a pick's first write is a removal: allowed
        assert sorted(_tenants(taken)) == ["capped", "free"]
        channel.release([f.tag for f in taken])  # so is a release's
        assert redis_client.hlen("unacked") == 0 and redis_client.hlen(HELD_KEY) == 0
        assert len(_take(channel, 10)) == 1  # the freed slot is taken
    finally:
        redis_client.config_set("maxmemory", 0)


def test_the_scripts_and_python_name_the_same_keys() -> None:
    lib = script("push")
    assert f"local CONF = '{CONF_KEY}'" in lib and f"local HELD = '{HELD_KEY}'" in lib
    assert "local PENDING_S = 30 " in lib and RESEND_AFTER_S == 30
    assert tenant_list("q", "bulk", "t") == "llmq:sched:{q}:l:bulk:t"


# --- the view (llmq queues, metrics) ------------------------------------------------------------------


def test_the_view_counts_queued_running_parked_and_blocked_per_class_and_tenant(
    redis_client: redis.Redis, sender: Sender, channel: Channel
) -> None:
    _conf(redis_client, tenants={"capped": {"max_concurrency": 1}})
    for _ in range(3):
        sender.send("capped", "bulk")
    for _ in range(2):
        sender.send("t", "interactive", key="k")
    sender.send("t", "normal")
    _take(channel, 10)  # capped: 1 running, then blocked; t: 1 keyed running, 1 parked, 1 normal running
    view = queue_view(redis_client, QUEUE, now=time.time() + 5)
    rows = {(r.priority, r.tenant): r for r in view.tenants}
    capped, keyed, normal = rows["bulk", "capped"], rows["interactive", "t"], rows["normal", "t"]
    assert (capped.queued, capped.running, capped.parked, capped.at_limit) == (2, 1, 0, True)
    assert (keyed.queued, keyed.running, keyed.parked, keyed.at_limit) == (1, 1, 1, False)
    assert (normal.queued, normal.running) == (0, 1)
    assert capped.oldest_wait_s is not None and capped.oldest_wait_s >= 5
    classes = {c.priority: (c.queued, c.running) for c in view.classes}
    assert classes == {"interactive": (1, 1), "normal": (0, 1), "bulk": (2, 1)}
    assert view.queued == 3 == channel._size(QUEUE)
    assert view.as_json()["queued"] == 3


def test_parked_jobs_count_in_their_own_class(redis_client: redis.Redis, sender: Sender, channel: Channel) -> None:
    """One key's parked jobs of two classes: each class's row counts its own (they were all counted in
    the class of the key's oldest parked job)."""
    sender.send("t", "bulk", key="k")
    sender.send("t", "interactive", key="k")
    sender.send("t", "bulk", key="k")
    sender.send("t", "interactive", key="k")
    assert _classes(_take(channel, 10)) == ["bulk"]  # the first runs (oldest), three park
    view = queue_view(redis_client, QUEUE)
    rows = {(r.priority, r.tenant): (r.queued, r.running, r.parked) for r in view.tenants}
    assert rows == {("interactive", "t"): (2, 0, 2), ("bulk", "t"): (1, 1, 1)}
    assert {c.priority: (c.queued, c.running) for c in view.classes} == {
        "interactive": (2, 0),
        "normal": (0, 0),
        "bulk": (1, 1),
    }


class _MovingRedis(redis.Redis):
    """A client that lets a worker take a job right after the view's first round trip (what happens
    under load between two reads that are not one step)."""

    move: Any = None

    def pipeline(self, transaction: bool = True, shard_hint: Any = None) -> Any:
        pipe = super().pipeline(transaction, shard_hint)
        execute, owner = pipe.execute, self

        def moving(*args: Any, **kwargs: Any) -> Any:
            reply = execute(*args, **kwargs)
            owner._moved()
            return reply

        pipe.execute = moving  # type: ignore[method-assign]
        return pipe

    def execute_command(self, *args: Any, **options: Any) -> Any:
        reply = super().execute_command(*args, **options)
        if args and str(args[0]).upper() in ("EVALSHA", "EVAL"):
            self._moved()
        return reply

    def _moved(self) -> None:
        move, self.move = self.move, None
        if move is not None:
            move()


def test_the_view_is_one_instant_jobs_taken_meanwhile_are_counted_once(
    redis_url: str, sender: Sender, channel: Channel
) -> None:
    """A job a worker takes while the view reads is counted queued or running, never neither: the view
    is read in one step (it was four round trips: a job taken between the first, which read the held
    jobs, and the third, which read the lists, was in no count)."""
    for _ in range(5):
        sender.send("t")
    _take(channel, 2)
    client = _MovingRedis.from_url(redis_url)
    try:
        client.move = lambda: _take(channel, 1)
        view = queue_view(client, QUEUE)
        assert client.move is None  # the worker did take one during the read
    finally:
        client.close()
    assert sum(c.queued for c in view.classes) + sum(c.running for c in view.classes) == 5
    assert view.as_json()["running"] in (2, 3)


def test_a_raised_cap_takes_effect_at_the_next_fetch_not_after_a_job_ends(
    redis_client: redis.Redis, sender: Sender, channel: Channel
) -> None:
    """A tenant's max_concurrency and a key's cap raised in the configuration (a worker started with
    the new file) while the tenant waits at its cap and the key's jobs are parked: the next fetch
    takes the new room. (They waited for one of the running jobs to end first: minutes with long
    calls, forever for nothing if those jobs were held by a worker that went away.)"""
    _conf(redis_client, tenants={"capped": {"max_concurrency": 1}})
    for _ in range(4):
        sender.send("capped")
    for _ in range(4):
        sender.send("t", key="doc")
    assert Counter(_tenants(_take(channel, 10))) == {"capped": 1, "t": 1}
    assert _take(channel, 10) == []  # both wait: the tenant at its cap, three parked on the key
    _conf(redis_client, tenants={"capped": {"max_concurrency": 3}}, key_concurrency=2)
    assert Counter(_tenants(_take(channel, 10))) == {"capped": 2, "t": 1}
    _conf(redis_client, tenants={"capped": {"max_concurrency": 3}}, keys={"doc": 4})
    assert Counter(_tenants(_take(channel, 10))) == {"t": 2}
    assert redis_client.scard(f"{P}run:t:capped") == 3 and redis_client.scard(f"{P}run:k:t:doc") == 4
    _conf(redis_client)  # caps lifted
    assert Counter(_tenants(_take(channel, 10))) == {"capped": 1}


def test_a_restored_job_whose_key_has_parked_jobs_is_next_for_its_key(
    redis_client: redis.Redis, sender: Sender, channel: Channel
) -> None:
    """A dead worker's job, given back while later jobs of its key are parked, is the next of its key
    to run (it went behind them: parked again as the newest)."""
    first, second, third = (sender.send("t", key="k") for _ in range(3))
    taken = _take(channel, 10)
    assert _ids(taken) == [first]
    channel.qos.restore_by_tag(taken[0].tag)  # the worker holding it died
    assert redis_client.scard(f"{P}run:k:t:k") == 0
    order = []
    for _ in range(3):
        got = _take(channel, 10)
        order += _ids(got)
        channel.release([f.tag for f in got])
    assert order == [first, second, third]
    view = queue_view(redis_client, QUEUE)
    assert view.queued == 0 and redis_client.hget(f"{P}parked", "t") == b"0"

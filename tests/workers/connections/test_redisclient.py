"""The one Redis client builder (``workers/connections/redisclient.py``): sync and asyncio clients from
one description of the target, plain or Sentinel, with the same pool rules; and the broker's view
of the same target (``kombu_broker``)."""

from __future__ import annotations

import asyncio
import select
import socket
from typing import ClassVar

import redis
import redis.asyncio as aredis
from redis.asyncio.sentinel import SentinelConnectionPool as AsyncSentinelPool
from redis.backoff import NoBackoff
from redis.retry import Retry
from redis.sentinel import SentinelConnectionPool

from workers.connections.redisclient import (
    FIRST_READ_SIZE,
    SOCKET_READ_SIZE,
    QuickCheckParser,
    async_redis_client,
    redis_client,
)
from workers.connections.redisurl import kombu_broker
from workers.connections.socketcheck import Probe, native_probe

SENTINELS = "sentinel://:pw@127.0.0.1:1;sentinel://127.0.0.1:2/3"  # never contacted: nothing is sent


def test_a_plain_url_gets_a_blocking_pool_of_the_given_size_sync_and_async(redis_url: str) -> None:
    sync = redis_client(redis_url, max_connections=7, timeout=3, socket_connect_timeout=1)
    assert isinstance(sync.connection_pool, redis.BlockingConnectionPool)
    assert sync.connection_pool.max_connections == 7 and sync.connection_pool.timeout == 3
    assert sync.ping()
    sync.close()

    async def check() -> None:
        client = async_redis_client(redis_url, max_connections=7, timeout=3, socket_connect_timeout=1)
        assert isinstance(client.connection_pool, aredis.BlockingConnectionPool)
        assert client.connection_pool.max_connections == 7 and client.connection_pool.timeout == 3
        assert await client.ping()
        await client.aclose()

    asyncio.run(check())


def test_a_retry_policy_reaches_the_connections() -> None:
    """redis-py 8 retries with each connection's policy: the ledger's "retry once, no backoff" must
    land there (given to the client beside a pool, it is silently ignored)."""
    retry = Retry(NoBackoff(), 1)
    client = redis_client("redis://127.0.0.1:1/0", max_connections=2, retry=retry, socket_connect_timeout=0.5)
    assert client.get_retry() is retry
    connection = client.connection_pool.make_connection()  # not connected: nothing is sent
    assert connection.retry.get_retries() == 1  # a copy of it (the default retries 3 times)


def test_a_sentinel_url_gets_the_same_master_client_sync_and_async() -> None:
    env_master = "mymaster"
    sync = redis_client(SENTINELS, max_connections=10)
    pool = sync.connection_pool
    assert isinstance(pool, SentinelConnectionPool)
    assert pool.service_name == env_master and pool.max_connections == 100  # at least 100: it cannot block
    assert pool.connection_kwargs["db"] == 3 and pool.connection_kwargs["password"] == "pw"

    async def check() -> None:
        client = async_redis_client(SENTINELS, max_connections=80)
        apool = client.connection_pool
        assert isinstance(apool, AsyncSentinelPool)
        assert apool.service_name == env_master and apool.max_connections == 160
        assert apool.connection_kwargs["db"] == 3 and apool.connection_kwargs["password"] == "pw"
        sentinels = apool.sentinel_manager.sentinels
        assert [s.connection_pool.connection_kwargs["port"] for s in sentinels] == [1, 2]

    asyncio.run(check())


def test_the_broker_sees_the_same_target() -> None:
    assert kombu_broker("redis://h:6379/1") == ("redis://h:6379/1", {})
    url, options = kombu_broker(SENTINELS, env={"LLMQ_REDIS_SENTINEL_MASTER": "primary"})
    assert url == "sentinel://:pw@127.0.0.1:1;sentinel://:pw@127.0.0.1:2/3"
    assert options == {"master_name": "primary"}


class _Counted(QuickCheckParser):
    """The parser with its readiness check counted (the OS poll, as in production)."""

    checks: ClassVar[list[bool]] = []

    @staticmethod
    def _count(sock: socket.socket) -> bool:
        real = native_probe()
        assert real is not None
        answer = real(sock)
        _Counted.checks.append(answer)
        return answer

    probe: ClassVar[Probe | None] = _count


def test_sync_clients_check_a_lent_connection_with_the_os_poll(redis_url: str) -> None:
    client = redis_client(redis_url)
    assert client.connection_pool.connection_kwargs["parser_class"] is QuickCheckParser
    client.close()
    _Counted.checks.clear()
    client = redis_client(redis_url, max_connections=1, parser_class=_Counted)
    try:
        for n in range(3):
            assert client.incr("quick-check") == n + 1
        # a quiet pooled connection is answered by the quick check alone
        assert _Counted.checks and not any(_Counted.checks)
    finally:
        client.close()


def test_a_connection_the_server_closed_is_still_noticed_and_replaced(redis_url: str) -> None:
    _Counted.checks.clear()
    client = redis_client(redis_url, max_connections=1, parser_class=_Counted, retry=Retry(NoBackoff(), 0))
    admin = redis.Redis.from_url(redis_url)
    try:
        client.client_setname("quick-check-victim")
        victim = next(c for c in admin.client_list() if c["name"] == "quick-check-victim")
        conn = client.connection_pool.get_connection()
        sock = conn._sock
        client.connection_pool.release(conn)
        assert admin.client_kill_filter(_id=victim["id"]) == 1
        assert select.select([sock], [], [], 10)[0]  # the server's close has reached the socket
        _Counted.checks.clear()
        # no retry allowed: only the lend-time check can keep this from failing on the dead socket
        assert client.set("after-kill", 1)
        assert _Counted.checks[0] is True  # the closed socket read as readable: hiredis' check ran
        assert client.get("after-kill") == b"1"
    finally:
        client.close()
        admin.close()


def _read_buffer(client: redis.Redis) -> int:
    connection = client.connection_pool.get_connection()
    try:
        return len(connection._parser._buffer)
    finally:
        client.connection_pool.release(connection)


def test_a_sync_connection_reads_into_a_4_kib_buffer_grown_to_16_kib_by_a_read_that_fills_it(redis_url: str) -> None:
    """redis-py's 64 KiB read buffer is allocated per connection: a worker with ~150 connections held
    9 MB of them. Ours start at 4 KiB and grow, x4 up to 16 KiB, only when a read fills them; a larger
    reply is read 16 KiB at a time."""
    client = redis_client(redis_url, max_connections=1)
    try:
        assert client.connection_pool.connection_kwargs["socket_read_size"] == SOCKET_READ_SIZE == 16 * 1024
        assert client.ping()
        assert _read_buffer(client) == FIRST_READ_SIZE == 4 * 1024
        short = b"s" * (FIRST_READ_SIZE - 100)  # the reply, with its header, still fits one read
        client.set("short-reply", short)
        for _ in range(3):
            assert client.get("short-reply") == short
        assert _read_buffer(client) == FIRST_READ_SIZE
        big = b"x" * (5 * SOCKET_READ_SIZE + 7)
        client.set("big-reply", big)
        assert client.get("big-reply") == big
        assert _read_buffer(client) == SOCKET_READ_SIZE  # x4 once, never beyond socket_read_size
        assert client.get("big-reply") == big
        assert client.get("short-reply") == short
        assert _read_buffer(client) == SOCKET_READ_SIZE
    finally:
        client.close()


def test_a_read_buffer_never_exceeds_a_smaller_socket_read_size(redis_url: str) -> None:
    client = redis_client(redis_url, max_connections=1, socket_read_size=1000)
    try:
        big = bytes(range(256)) * 300
        client.set("big-reply", big)
        assert client.get("big-reply") == big
        assert _read_buffer(client) == 1000
    finally:
        client.close()


def test_a_reply_split_over_many_reads_while_the_buffer_grows_parses_whole(redis_url: str) -> None:
    client = redis_client(redis_url, max_connections=1)
    try:
        values = [bytes([n % 251]) * (n * 997) for n in range(1, 40)]
        client.rpush("many-replies", *values)
        assert client.lrange("many-replies", 0, -1) == values
        assert _read_buffer(client) == SOCKET_READ_SIZE
    finally:
        client.close()

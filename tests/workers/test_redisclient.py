"""The one Redis client builder (``workers/contract/redisclient.py``): sync and asyncio clients from
one description of the target, plain or Sentinel, with the same pool rules; and the broker's view
of the same target (``kombu_broker``)."""

from __future__ import annotations

import asyncio

import redis
import redis.asyncio as aredis
from redis.asyncio.sentinel import SentinelConnectionPool as AsyncSentinelPool
from redis.backoff import NoBackoff
from redis.retry import Retry
from redis.sentinel import SentinelConnectionPool

from workers.contract.redisclient import async_redis_client, redis_client
from workers.contract.redisurl import kombu_broker

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

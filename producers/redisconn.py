"""Redis clients for producers, the gateway and the CLI from ``LLMQ_REDIS_URL``: plain or Sentinel.

Same rules as the worker's (``workers/runtime/redisconn.py``); the URL grammar and the sentinel
settings are in ``workers/contract/redisurl.py``.
"""

from __future__ import annotations

from typing import Any, cast

import redis
import redis.asyncio as aredis
from redis.asyncio.sentinel import Sentinel as AsyncSentinel
from redis.sentinel import Sentinel

from workers.contract.redisurl import SentinelTarget, sentinel_target

__all__ = ["async_redis_client", "redis_client"]


def _sentinel_kwargs(target: SentinelTarget) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"socket_connect_timeout": 2, "socket_timeout": 2}
    if target.sentinel_password:
        kwargs["password"] = target.sentinel_password
    return kwargs


def redis_client(url: str, *, max_connections: int = 64, timeout: float = 20, **kwargs: Any) -> redis.Redis:
    target = sentinel_target(url)
    if target is None:
        pool = redis.BlockingConnectionPool.from_url(url, max_connections=max_connections, timeout=timeout, **kwargs)
        return redis.Redis(connection_pool=pool)
    sentinel = Sentinel(list(target.sentinels), sentinel_kwargs=_sentinel_kwargs(target))
    client = sentinel.master_for(
        target.master, db=target.db, password=target.password, max_connections=max(2 * max_connections, 100), **kwargs
    )
    return cast("redis.Redis", client)


def async_redis_client(url: str, *, max_connections: int = 64, timeout: float = 20, **kwargs: Any) -> aredis.Redis:
    target = sentinel_target(url)
    if target is None:
        pool = aredis.BlockingConnectionPool.from_url(url, max_connections=max_connections, timeout=timeout, **kwargs)
        return aredis.Redis(connection_pool=pool)
    sentinel = AsyncSentinel(list(target.sentinels), sentinel_kwargs=_sentinel_kwargs(target))
    client = sentinel.master_for(
        target.master, db=target.db, password=target.password, max_connections=max(2 * max_connections, 100), **kwargs
    )
    return cast("aredis.Redis", client)

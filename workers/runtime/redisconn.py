"""Redis clients for the worker from the one setting (``LLMQ_REDIS_URL``): plain or Sentinel.

A plain URL gets a *blocking* pool sized to the concurrency (redis-py 8's default pool raises past
its size; ``notes/celery-at-scale.md`` §3). A ``sentinel://`` URL gets a master client that asks
the sentinels where the master is, and asks again after a fail-over (its pool cannot block, so it
is sized well above the concurrency instead). See ``workers/contract/redisurl.py``.
"""

from __future__ import annotations

from typing import Any, cast

import redis
from redis.sentinel import Sentinel

from workers.contract.redisurl import sentinel_target

__all__ = ["redis_client"]


def redis_client(url: str, *, max_connections: int, timeout: float = 20, **kwargs: Any) -> redis.Redis:
    """A client for ``url`` whose pool holds ``max_connections`` (waiting up to ``timeout`` s for one)."""
    target = sentinel_target(url)
    if target is None:
        retry = kwargs.pop("retry", None)
        pool = redis.BlockingConnectionPool.from_url(url, max_connections=max_connections, timeout=timeout, **kwargs)
        return (
            redis.Redis(connection_pool=pool, retry=retry) if retry is not None else redis.Redis(connection_pool=pool)
        )
    sentinel_kwargs: dict[str, Any] = {"socket_connect_timeout": 2, "socket_timeout": 2}
    if target.sentinel_password:
        sentinel_kwargs["password"] = target.sentinel_password
    sentinel = Sentinel(list(target.sentinels), sentinel_kwargs=sentinel_kwargs)
    client = sentinel.master_for(
        target.master,
        db=target.db,
        password=target.password,
        max_connections=max(2 * max_connections, 100),
        **kwargs,
    )
    return cast("redis.Redis", client)

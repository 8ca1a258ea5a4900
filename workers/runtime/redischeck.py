"""The worker refuses a Redis too old for its job queue, at start, with one line naming the version,
and says when that Redis keeps the queue in memory only (a restart would lose the jobs).

The broker transport (``workers/runtime/broker.py``) waits for jobs with ``BLMOVE``, which Redis has
since 6.2. On an older server the worker would start and then fail its first wait ("unknown
command"); so it reads ``INFO server`` once before it takes jobs and stops with
:class:`RedisVersionError` instead. :func:`check_redis_version` judges an ``INFO
server`` reply (a seam: tests hand it any version); :func:`check_broker_redis` is what the worker's
start (``workers/runtime/app.py``, Celery's ``worker_init``) calls.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable, Mapping

import redis

from workers.connections.brokerurl import is_amqp
from workers.connections.oom import refused_for_memory
from workers.connections.redisclient import redis_client
from workers.contract.redaction import shown_url
from workers.llm.errors import ConfigurationError

__all__ = [
    "MIN_REDIS_VERSION",
    "RedisVersionError",
    "check_broker_redis",
    "check_redis_version",
    "check_state_redis",
    "persistence_notice",
    "wait_until_writable",
]

log = logging.getLogger("llmq.worker")

#: The oldest Redis the job queue runs on: ``BLMOVE`` (6.2).
MIN_REDIS_VERSION = (6, 2, 0)


class RedisVersionError(ConfigurationError):
    """The Redis that holds the job queue is older than :data:`MIN_REDIS_VERSION`."""

    type_name = "redis_version"


def _version(text: str) -> tuple[int, ...]:
    """``"6.0.16"`` -> ``(6, 0, 16)``; the leading numbers only (``7.2.4-rc1`` -> ``(7, 2, 4)``)."""
    parts: list[int] = []
    for piece in text.split("."):
        digits = re.match(r"\d+", piece)
        if digits is None:
            break
        parts.append(int(digits.group()))
    return tuple(parts)


def check_redis_version(info: Mapping[str, object], *, url: str) -> None:
    """Raise :class:`RedisVersionError` when ``info`` (an ``INFO server`` reply as redis-py parses it)
    reports a Redis older than :data:`MIN_REDIS_VERSION`. A reply without a readable version passes:
    a Redis-compatible server that does not say is given the benefit of the doubt."""
    reported = str(info.get("redis_version", "") or "")
    version = _version(reported)
    if not version or version >= MIN_REDIS_VERSION:
        return
    needed = ".".join(map(str, MIN_REDIS_VERSION[:2]))
    raise RedisVersionError(
        f"Redis at {shown_url(url)} is version {reported}; the job queue needs Redis >= {needed} (BLMOVE): "
        "upgrade Redis, or move the queue to RabbitMQ with LLMQ_BROKER_URL=amqp://..."
    )


def check_broker_redis(broker_url: str, *, timeout_s: float = 5.0) -> None:
    """Check the Redis that holds the job queue (nothing to check on RabbitMQ). A Redis that does
    not answer is not judged here: the consumer's own connection retries report and ride it out."""
    if is_amqp(broker_url):
        return
    client = redis_client(broker_url, max_connections=1, socket_connect_timeout=timeout_s, socket_timeout=timeout_s)
    try:
        info = client.info("server")
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        log.warning("could not read the Redis version at %s before start (%s)", shown_url(broker_url), exc)
        client.close()
        return
    try:
        check_redis_version(info, url=broker_url)
        wait_until_writable(client, url=broker_url)
        _say_if_volatile(client, broker_url)
    except (redis.ConnectionError, redis.TimeoutError):
        pass  # gone meanwhile: the consumer's own connection reports it
    finally:
        client.close()


def check_state_redis(redis_url: str, broker_url: str | None, *, timeout_s: float = 5.0) -> None:
    """The Redis of the jobs' state (claims, events, results, the ledger) when the queue lives
    elsewhere (RabbitMQ, or a Redis of its own): said at start when it keeps that state in memory only."""
    if not broker_url or broker_url == redis_url:
        return  # the same server: check_broker_redis has said it
    client = redis_client(redis_url, max_connections=1, socket_connect_timeout=timeout_s, socket_timeout=timeout_s)
    try:
        _say_if_volatile(client, redis_url)
    except (redis.ConnectionError, redis.TimeoutError):
        pass  # not judged here: the worker's own start reports an unreachable Redis
    finally:
        client.close()


def _say_if_volatile(client: redis.Redis, url: str) -> None:
    notice = persistence_notice(client.info("persistence"), _save_points(client), url=url)
    if notice is not None:
        log.warning(notice)


def _save_points(client: redis.Redis) -> str | None:
    """Redis's ``save`` setting (its snapshot schedule, "" for none), or None where ``CONFIG`` is not
    allowed (a managed Redis)."""
    try:
        found = client.config_get("save")
    except redis.ResponseError:
        return None
    value = found.get("save") if isinstance(found, dict) else None
    return None if value is None else str(value)


def persistence_notice(info: Mapping[str, object], save: str | None, *, url: str) -> str | None:
    """What an operator must hear when the Redis that holds the queue keeps its writes only in memory
    (``INFO persistence`` shows no append-only file): a restart loses the queued and running jobs since
    its last snapshot, or all of them when it takes none (``save`` is ""). None for a Redis with AOF, or
    one that does not say (a Redis-compatible server without the field)."""
    if str(info.get("aof_enabled", "1")) != "0":
        return None
    since = "all of them: it takes no snapshots either" if save == "" else "those since its last snapshot"
    return (
        f"Redis at {shown_url(url)} keeps the job queue in memory only (appendonly no): a restart or crash "
        f"of it loses the jobs queued and running, {since}; run it with appendonly yes (ops/redis.conf)"
    )


def wait_until_writable(
    client: redis.Redis, *, url: str, sleep: Callable[[float], None] = time.sleep, say_every: int = 10
) -> int:
    """Wait while Redis refuses writes (full at ``maxmemory``): a worker's start writes (its queue's
    declaration, its presence), which Redis refuses then, and Celery stops at the first refusal. Says
    so once every ``say_every`` tries (a second apart); returns how many tries were refused."""
    refused = 0
    while True:
        try:
            client.set(f"llmq:startprobe:{os.getpid()}", b"1", px=2000)
            return refused
        except (redis.ConnectionError, redis.TimeoutError):
            return refused  # not judged here (see check_broker_redis)
        except redis.ResponseError as exc:
            if not refused_for_memory(exc):
                return refused  # another refusal (a read-only replica...): the start reports it itself
        if refused % say_every == 0:
            log.warning(
                "Redis at %s is full (it refuses writes at maxmemory); the worker starts once it takes writes again",
                shown_url(url),
            )
        refused += 1
        sleep(1.0)

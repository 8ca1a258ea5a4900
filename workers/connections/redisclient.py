"""The one builder of Redis clients from ``LLMQ_REDIS_URL``: plain or Sentinel, sync or asyncio.

Workers, producers, the gateway and the CLI all build their clients here, so every one follows
the same fail-over (the URL grammar and the sentinel settings: ``workers/connections/redisurl.py``;
the broker and Flower reach the same target through kombu, ``SentinelTarget.broker_url``).

- A plain URL gets a *blocking* pool of ``max_connections`` (waiting up to ``timeout`` s for a
  free connection): redis-py's default pool raises past its size instead, which a worker running
  more jobs than that at once hits (``notes/celery-at-scale.md`` §3).
- A ``sentinel://`` URL gets a master client that asks the sentinels where the master is, and asks
  again after a fail-over. Its pool cannot block, so it is sized well above ``max_connections``.

The sync and the asyncio client are built by one function from one description of the target;
only the redis-py classes differ (:class:`_Flavour`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, ClassVar, cast

import redis
import redis.asyncio as aredis
from redis._parsers import _HiredisParser
from redis.asyncio.sentinel import Sentinel as AsyncSentinel
from redis.sentinel import Sentinel
from redis.utils import HIREDIS_AVAILABLE, SENTINEL

from workers.connections.packer import HiredisPacker
from workers.connections.redisurl import SentinelTarget, sentinel_target
from workers.connections.socketcheck import Probe, native_probe

__all__ = [
    "FIRST_READ_SIZE",
    "SOCKET_READ_SIZE",
    "QuickCheckParser",
    "async_redis_client",
    "redis_client",
    "sync_parser_options",
]


class QuickCheckParser(_HiredisParser):
    """hiredis' parser, whose check of a lent connection polls the OS's own ``poll``, and whose read
    buffer starts small.

    redis-py checks every connection its pool lends for pending bytes (``can_read``, timeout 0),
    through ``select.poll``; in a gevent worker that is gevent's poll, an event-loop round per
    command (~3 % of a streaming job's CPU, py-spy). Here a quiet socket (nothing buffered in the
    reader or the TLS layer, nothing to read on the socket) is answered at once; anything else
    goes through hiredis' own check, which tells pending data from a closed connection.

    The buffer a connection reads its socket into is :data:`FIRST_READ_SIZE` at first and grows
    (x :data:`READ_GROWTH`, up to the connection's ``socket_read_size``) only when a read fills it:
    most connections only ever get short replies."""

    #: The readiness check (a seam for tests); None = :func:`native_probe`'s, found on first use.
    probe: ClassVar[Probe | None] = None

    def __init__(self, socket_read_size: int) -> None:
        super().__init__(min(socket_read_size, FIRST_READ_SIZE))  # type: ignore[no-untyped-call]
        self._largest_read = socket_read_size

    def read_from_socket(self, timeout: Any = SENTINEL, raise_on_timeout: bool = True) -> bool:
        reader = self._reader
        before = reader.len() if reader is not None else 0
        read = bool(super().read_from_socket(timeout, raise_on_timeout))  # type: ignore[no-untyped-call]
        size = len(self._buffer)
        # what this read fed the reader (which drops consumed bytes only in ``gets``)
        if read and size < self._largest_read and reader is self._reader and reader.len() - before >= size:
            self._buffer = bytearray(min(READ_GROWTH * size, self._largest_read))
        return read

    def can_read(self, timeout: float = 0) -> bool:
        probe, reader, sock = type(self).probe or _os_probe(), self._reader, self._sock
        if not timeout and probe is not None and reader is not None and sock is not None:
            pending = getattr(sock, "pending", None)
            if not reader.has_data() and not (pending is not None and pending()) and not probe(sock):
                return False
        return bool(super().can_read(timeout))


@functools.cache
def _os_probe() -> Probe | None:
    """:func:`native_probe`, looked up once (not at import: a producer may never lend a connection)."""
    return native_probe()


#: Bytes a connection reads from its socket at once, at most. redis-py's 64 KiB is a buffer each
#: connection allocates (and touches) when it is made, and a worker holds one connection per busy slot
#: in each of its pools (43 Redis connections at 200 busy slots in ``bench/worker_footprint.py
#: --upstream 1``). Replies here are a few hundred bytes to a few KiB (a job's message, a script's
#: answer); a larger one takes one more read per 16 KiB.
SOCKET_READ_SIZE = 16 * 1024
#: The read buffer of a new connection (:class:`QuickCheckParser`), grown when a read fills it.
FIRST_READ_SIZE = 4 * 1024
#: How much a read buffer grows when a read fills it.
READ_GROWTH = 4


def sync_parser_options() -> dict[str, Any]:
    """Connection options for a sync client: a :data:`SOCKET_READ_SIZE` read buffer and, where hiredis
    is installed, :class:`QuickCheckParser` and :class:`~workers.connections.packer.HiredisPacker`
    (arguments packed by hiredis, not encoded in Python)."""
    if not HIREDIS_AVAILABLE:
        return {"socket_read_size": SOCKET_READ_SIZE}
    return {"parser_class": QuickCheckParser, "command_packer": HiredisPacker(), "socket_read_size": SOCKET_READ_SIZE}


#: Sentinel clients get at least this many connections (their pool raises when it runs out).
SENTINEL_MIN_CONNECTIONS = 100


@dataclass(frozen=True, slots=True)
class _Flavour:
    """The redis-py classes of one API (sync or asyncio): the same constructors, the same arguments."""

    client: type[Any]
    pool: type[Any]
    sentinel: type[Any]


_SYNC = _Flavour(redis.Redis, redis.BlockingConnectionPool, Sentinel)
_ASYNC = _Flavour(aredis.Redis, aredis.BlockingConnectionPool, AsyncSentinel)


def _sentinel_kwargs(target: SentinelTarget) -> dict[str, Any]:
    """How to talk to the sentinels themselves (short timeouts: a dead one is skipped quickly)."""
    kwargs: dict[str, Any] = {"socket_connect_timeout": 2, "socket_timeout": 2}
    if target.sentinel_password:
        kwargs["password"] = target.sentinel_password
    return kwargs


def _build(flavour: _Flavour, url: str, max_connections: int, timeout: float, kwargs: dict[str, Any]) -> Any:
    """One client of ``flavour`` for ``url``: the only place a target becomes a pool."""
    target = sentinel_target(url)
    if target is None:
        # every option (a ``retry`` policy too) goes to the pool's connections: redis-py 8 retries
        # with the connection's policy and ignores the client's when it is given a pool
        pool = flavour.pool.from_url(url, max_connections=max_connections, timeout=timeout, **kwargs)
        return flavour.client(connection_pool=pool)
    sentinel = flavour.sentinel(list(target.sentinels), sentinel_kwargs=_sentinel_kwargs(target))
    return sentinel.master_for(
        target.master,
        db=target.db,
        password=target.password,
        max_connections=max(2 * max_connections, SENTINEL_MIN_CONNECTIONS),
        **kwargs,
    )


def redis_client(url: str, *, max_connections: int = 64, timeout: float = 20, **kwargs: Any) -> redis.Redis:
    """A sync client for ``url``; ``kwargs`` are redis-py connection options (``socket_timeout``,
    ``retry`` ...)."""
    return cast("redis.Redis", _build(_SYNC, url, max_connections, timeout, {**sync_parser_options(), **kwargs}))


def async_redis_client(url: str, *, max_connections: int = 64, timeout: float = 20, **kwargs: Any) -> aredis.Redis:
    """The asyncio twin of :func:`redis_client`: the same target, pool rules and options."""
    return cast("aredis.Redis", _build(_ASYNC, url, max_connections, timeout, dict(kwargs)))

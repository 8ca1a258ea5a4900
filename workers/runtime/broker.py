"""The Celery broker transport: kombu's Redis transport, minus a client object per operation.

kombu (5.7) builds a fresh ``redis.Redis`` for every ack and unacked-index update
(``Channel.conn_or_acquire`` -> ``_create_client``). They all share the channel's connection
pool, so they are interchangeable; but with redis-py 8 each construction fills a ~200-entry
response-callback table, which measured ~6% of a queued job's worker CPU. This channel builds
that client once and reuses it (``redis.Redis`` is safe to share: every command borrows a pooled
connection). Everything else (visibility timeout, unacked restore, priorities) is kombu's.

Selected by :func:`transport_for` for ``redis://``, ``rediss://`` and ``unix://`` broker URLs;
other schemes (``sentinel://``) keep kombu's own transport.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from kombu.transport import redis as kombu_redis

__all__ = ["Channel", "Transport", "transport_for"]

_SCHEMES = {"redis", "rediss", "unix", "redis+socket"}


class Channel(kombu_redis.Channel):
    _shared_client: Any = None

    def _create_client(self, asynchronous: bool = False) -> Any:
        if asynchronous:
            return super()._create_client(asynchronous=True)
        client = self._shared_client
        if client is None:
            client = self._shared_client = super()._create_client()
        return client


class Transport(kombu_redis.Transport):
    Channel = Channel


def transport_for(broker_url: str) -> str | None:
    """The ``broker_transport`` setting for a URL: ours for plain Redis, else None (kombu's)."""
    return f"{__name__}:Transport" if urlsplit(broker_url).scheme in _SCHEMES else None

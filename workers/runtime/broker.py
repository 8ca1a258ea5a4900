"""The Celery broker transport: kombu's Redis transport, with proof of life for held messages and
without a client object per operation.

**Heartbeat.** kombu keeps every message a worker holds (running or prefetched, with late acks) in
the ``unacked_index`` sorted set, scored by the time it was fetched, and any consumer restores
entries older than ``visibility_timeout`` to the queue: it cannot tell a long job from a dead
worker, so the timeout had to exceed the longest job and a SIGKILLed worker's jobs waited an hour.
Here each channel that holds messages runs a thread that re-scores its held entries to "now"
every ``heartbeat_interval`` seconds (``ZADD XX``: an entry acked meanwhile is not revived).
Entries of a live worker therefore never age; a dead, frozen or cut-off worker's entries age out
after ``visibility_timeout`` seconds and its jobs move to a live worker. Should a live worker
miss its beats (starved past the timeout), its job is delivered twice: the job's claim keeps the
two runs from overlapping and fences the one that lost it (``workers/jobs/store.py``).

kombu (5.7) builds a fresh ``redis.Redis`` for every ack and unacked-index update
(``Channel.conn_or_acquire`` -> ``_create_client``). They all share the channel's connection
pool, so they are interchangeable; but with redis-py 8 each construction fills a ~200-entry
response-callback table, which measured ~6% of a queued job's worker CPU. This channel builds
that client once and reuses it (``redis.Redis`` is safe to share: every command borrows a pooled
connection). Everything else (visibility timeout, unacked restore, priorities) is kombu's.

Selected by :func:`transport_for` for ``redis://``, ``rediss://`` and ``unix://`` broker URLs, and
in its Sentinel form for ``sentinel://``; other schemes (``amqp://``) keep kombu's own transport.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from typing import Any
from urllib.parse import urlsplit

import redis
from kombu.transport import redis as kombu_redis

__all__ = ["Channel", "QoS", "SentinelChannel", "SentinelTransport", "Transport", "transport_for"]

log = logging.getLogger("llmq.broker")

_SCHEMES = {"redis", "rediss", "unix", "redis+socket"}


class QoS(kombu_redis.QoS):
    channel: Channel

    def append(self, message: Any, delivery_tag: str) -> None:
        super().append(message, delivery_tag)
        self.channel.start_heartbeat()

    def held_tags(self) -> list[str]:
        """The delivery tags this channel holds now (copied: the consumer mutates the dict)."""
        for _ in range(10):
            try:
                return list(self._delivered or ())
            except RuntimeError:  # changed size during the copy
                continue
        return []


class Channel(kombu_redis.Channel):
    QoS = QoS
    _shared_client: Any = None
    #: Seconds between re-scores of the held messages; None = a fifth of the visibility timeout.
    heartbeat_interval: float | None = None
    from_transport_options = (*kombu_redis.Channel.from_transport_options, "heartbeat_interval")
    _beat_thread: threading.Thread | None = None
    _beat_stop: threading.Event | None = None
    _beat_lock = threading.Lock()

    @property
    def beat_interval(self) -> float:
        if self.heartbeat_interval:
            return float(self.heartbeat_interval)
        return max(0.2, float(self.visibility_timeout) / 5)

    def start_heartbeat(self) -> None:
        if self._beat_thread is not None:
            return
        with self._beat_lock:
            if self._beat_thread is None:
                self._beat_stop = threading.Event()
                thread = threading.Thread(target=self._beat_loop, name="llmq-unacked-heartbeat", daemon=True)
                thread.start()
                self._beat_thread = thread

    def refresh_unacked(self, now: float | None = None) -> int:
        """Re-score every held message's ``unacked_index`` entry to ``now``; returns how many were held."""
        qos = self.qos
        tags = qos.held_tags() if isinstance(qos, QoS) else []
        if not tags:
            return 0
        stamp = time.time() if now is None else now
        self._create_client().zadd(self.unacked_index_key, dict.fromkeys(tags, stamp), xx=True)
        return len(tags)

    def _beat_loop(self) -> None:
        stop = self._beat_stop
        assert stop is not None
        while not stop.wait(self.beat_interval):
            if self.closed:
                return
            try:
                self.refresh_unacked()
            except redis.RedisError as exc:
                log.warning("broker heartbeat: Redis unavailable (%s); retrying", exc)
            except Exception:  # never let the heartbeat die silently
                log.exception("broker heartbeat failed; retrying")

    def _do_restore_message(
        self, payload: Any, exchange: str, routing_key: str, pipe: Any, leftmost: bool = False
    ) -> None:
        """Restore under a fresh delivery tag: the run that lost the message (frozen, cut off) may
        still ack its old tag later, which must not remove the new holder's unacked entry."""
        with contextlib.suppress(KeyError, TypeError):
            payload["properties"]["delivery_tag"] = self._next_delivery_tag()
        super()._do_restore_message(payload, exchange, routing_key, pipe, leftmost)  # type: ignore[misc]  # private kombu method the stubs omit

    def close(self) -> None:
        if self._beat_stop is not None:
            self._beat_stop.set()
        super().close()

    def _create_client(self, asynchronous: bool = False) -> Any:
        if asynchronous:
            return super()._create_client(asynchronous=True)  # type: ignore[misc]  # private kombu method the stubs omit
        client = self._shared_client
        if client is None:
            client = self._shared_client = super()._create_client()  # type: ignore[misc]  # private kombu method the stubs omit
        return client


class Transport(kombu_redis.Transport):
    Channel = Channel


class SentinelChannel(Channel, kombu_redis.SentinelChannel):
    """The same heartbeat over kombu's Sentinel channel (``sentinel://`` broker URLs)."""

    from_transport_options = (*kombu_redis.SentinelChannel.from_transport_options, "heartbeat_interval")


class SentinelTransport(kombu_redis.SentinelTransport):
    Channel = SentinelChannel


def transport_for(broker_url: str) -> str | None:
    """The ``broker_transport`` setting for a URL: ours for Redis and Sentinel, else None (kombu's)."""
    scheme = urlsplit(broker_url.split(";", 1)[0]).scheme
    if scheme in _SCHEMES:
        return f"{__name__}:Transport"
    if scheme == "sentinel":
        return f"{__name__}:SentinelTransport"
    return None

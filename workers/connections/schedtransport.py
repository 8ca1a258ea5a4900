"""kombu's Redis transport with queues that are schedules: what producers send through.

A message sent to a queue is not pushed on the queue's list: :class:`SchedulingChannel` queues it,
with one script (:data:`~workers.connections.schedule.PUSH`), on its class and tenant's list of the
queue's schedule (``workers/connections/schedule.py``), read from the job's scheduling header
(:data:`~workers.contract.schedule.SCHED_HEADER`), and rings the queue's bell for a waiting worker.
A message given back (a dead worker's, a requeue) goes back to that list the same way, releasing
the slot it held. The worker's transport (``workers/runtime/broker.py``) is this channel plus the
scheduled fetch; producers use it as it is (:func:`producer_transport`). kombu's message priorities
are not used (every message of a class shares one list), and kombu's own queue list is only read by
the workers, which move what a producer without this transport put there into the schedule.
"""

from __future__ import annotations

import contextlib
from typing import Any
from urllib.parse import urlsplit

from kombu.transport import redis as kombu_redis
from kombu.utils.json import dumps

from workers.connections.schedule import PUSH, RESTORE, attributes_of, queue_prefix, script
from workers.contract.keys import JobKeys
from workers.contract.schedule import SCHED_HEADER

__all__ = [
    "SchedulingChannel",
    "SchedulingSentinelChannel",
    "SchedulingSentinelTransport",
    "SchedulingTransport",
    "producer_transport",
]

SIZE = "size"


class SchedulingChannel(kombu_redis.Channel):
    """kombu's Redis channel, queueing into the schedule of a queue.

    A producer's channel (transport option ``push_once``, :func:`producer_transport`'s users set it)
    pushes a registered job once: its push finding the job's send already recorded is the same send
    repeated after the reply was lost, and queues nothing (``lua/push.lua``). A worker's re-queue of a
    job it runs is pushed whatever the registration says."""

    from_transport_options = (*kombu_redis.Channel.from_transport_options, "push_once")
    #: A producer's channel: a job's message is queued once per registration.
    push_once = False

    # kombu's, which its stubs omit
    _next_delivery_tag: Any
    _lookup: Any

    def sched_script(self, name: str) -> Any:
        """A scheduling script, registered once per channel (redis-py reloads it on ``NOSCRIPT``)."""
        scripts: dict[str, Any] = self.__dict__.setdefault("_sched_scripts", {})
        found = scripts.get(name)
        if found is None:
            client = self._create_client()  # type: ignore[attr-defined]  # kombu's, which its stubs omit
            found = scripts[name] = client.register_script(script(name))
        return found

    def _put(self, queue: str, message: dict[str, Any], **kwargs: Any) -> None:
        headers = message.get("headers")
        if not (isinstance(headers, dict) and SCHED_HEADER in headers):
            # not a job (a remote-control reply, another app's task): kombu's list, as before (a
            # worker consuming that queue moves what it finds there into the schedule)
            super()._put(queue, message, **kwargs)
            return
        # a publish batch (kombu's) is sent at once: the script is the message's whole write
        kwargs.pop("_publish_batch", None)
        found = attributes_of(message)
        prefix = queue_prefix(queue)
        # the job's registration records the send in the same step when it is in this Redis
        meta = JobKeys(found.job_id).meta if found.job_id else prefix
        args = [dumps(message), found.priority, found.tenant, 0, found.job_id, queue, "1" if self.push_once else ""]
        with self.conn_or_acquire() as client:
            self.sched_script(PUSH)(keys=[prefix, meta], args=args, client=client)

    def _do_restore_message(
        self, payload: Any, exchange: str, routing_key: str, pipe: Any, leftmost: bool = False
    ) -> None:
        """Give a held message back to its class and tenant's list, inside kombu's restore transaction
        (which removes its unacked entry), and release the slot its old tag held. It goes back under a
        fresh delivery tag: the run that lost the message (frozen, cut off) may still ack its old tag
        later, which must not remove the new holder's entry. ``leftmost`` (kombu's requeue of a
        rejected message) puts it behind its tenant's queued messages, else it is taken next."""
        old_tag = ""
        with contextlib.suppress(KeyError, TypeError):
            old_tag = str(payload["properties"]["delivery_tag"])
            payload["properties"]["delivery_tag"] = self._next_delivery_tag()
        with contextlib.suppress(KeyError, TypeError):
            payload["headers"]["redelivered"] = True
            payload["properties"]["delivery_info"]["redelivered"] = True
        found = attributes_of(payload)
        for queue in self._lookup(exchange, routing_key):
            args = [dumps(payload), found.priority, found.tenant, 0 if leftmost else 1, old_tag]
            self.sched_script(RESTORE)(keys=[queue_prefix(queue)], args=args, client=pipe)

    def _size(self, queue: str) -> int:
        with self.conn_or_acquire() as client:
            return int(self.sched_script(SIZE)(keys=[queue, queue_prefix(queue)], client=client))

    def _purge(self, queue: str) -> int:
        """Drop every queued message of the queue (its list, its schedule's lists and parked
        messages); held ones stay held. Returns how many were dropped."""
        count = self._size(queue)
        prefix = queue_prefix(queue)
        with self.conn_or_acquire() as client:
            names = ("classes", "blocked", "parked", "parkedc", "parkedkeys", "freed")
            doomed = [queue, *(f"{prefix}{name}" for name in names)]
            for pattern in ("l:*", "ring:*", "blk:*", "park:*", "pending:*"):
                doomed.extend(client.scan_iter(match=f"{_escape(prefix)}{pattern}", count=1000))
            client.delete(*doomed)
        return count


def _escape(prefix: str) -> str:
    """A key prefix as a literal ``SCAN MATCH`` pattern."""
    return "".join(f"\\{ch}" if ch in "*?[]\\" else ch for ch in prefix)


class SchedulingTransport(kombu_redis.Transport):
    Channel = SchedulingChannel


class SchedulingSentinelChannel(SchedulingChannel, kombu_redis.SentinelChannel):
    """The same over kombu's Sentinel channel (``sentinel://`` broker URLs)."""

    from_transport_options = (*kombu_redis.SentinelChannel.from_transport_options, "push_once")


class SchedulingSentinelTransport(kombu_redis.SentinelTransport):
    Channel = SchedulingSentinelChannel


_SCHEMES = {"redis", "rediss", "unix", "redis+socket"}


def producer_transport(broker_url: str) -> str | None:
    """The ``broker_transport`` setting of a producer for a kombu broker URL: the scheduling transport
    for Redis and Sentinel, else None (kombu's, for RabbitMQ)."""
    scheme = urlsplit(broker_url.split(";", 1)[0]).scheme
    if scheme in _SCHEMES:
        return f"{__name__}:SchedulingTransport"
    if scheme == "sentinel":
        return f"{__name__}:SchedulingSentinelTransport"
    return None

"""Where a test's jobs queue (the ``broker`` fixture in tests/conftest.py)."""

from __future__ import annotations

from dataclasses import dataclass

import redis

from producers.client import Client
from workers.connections.brokerurl import is_amqp
from workers.connections.schedule import queue_prefix
from workers.contract import CompletionJob, JobKeys
from workers.settings import Settings

__all__ = ["Broker", "amqp_worker", "queued_count", "queued_payloads"]


@dataclass(frozen=True)
class Broker:
    """``kind`` ("redis" or "amqp"), the broker ``url`` and the job ``queue`` name."""

    kind: str
    url: str
    queue: str


def amqp_worker(settings: Settings) -> bool:
    """True when the worker's queue is on RabbitMQ: its test worker then needs Celery's event heartbeat,
    whose timer is what wakes the otherwise idle amqp event loop to notice the end of the test."""
    return is_amqp(settings.broker_url or settings.redis_url)


def queued_payloads(r: redis.Redis, queue: str) -> list[bytes]:
    """Every message a Redis queue holds, not taken by a worker: its kombu list (a producer without the
    scheduling transport), then its schedule's lists and parked messages (workers/connections/schedule.py).

    Each list once: ``SCAN`` may return a key twice, and does when Redis shrinks its key table between
    two pages (its cron does so ~0.1 s after many keys were deleted: a test freeing a full Redis's
    ballast and counting right after, on a loaded machine, saw one message counted twice)."""
    pattern = "".join(f"\\{ch}" if ch in "*?[]\\" else ch for ch in queue_prefix(queue))
    lists, parked = (set(r.scan_iter(match=f"{pattern}{kind}:*")) for kind in ("l", "park"))
    keys = [queue, *sorted(lists), *sorted(parked)]
    return [bytes(item) for key in keys for item in r.lrange(key, 0, -1)]


def queued_count(r: redis.Redis, queue: str) -> int:
    """How many messages a Redis queue holds, not taken by a worker."""
    return len(queued_payloads(r, queue))


def deliver_again(client: Client, r: redis.Redis, job: CompletionJob) -> None:
    """The job's message once more, as a broker restore or redelivery sends it (a worker died before
    its ack left; a message held too long was restored). A producer's send of a job whose send is
    already recorded queues nothing (``push_once``: the same send repeated after its reply was lost);
    a redelivery is not a producer's send, so the record is lifted for this one send (the push
    records it again)."""
    r.hdel(JobKeys(job.id).meta, "sent")
    client.send(job)

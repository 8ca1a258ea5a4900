"""The job queue's schedule as Prometheus metrics, read from Redis when Prometheus scrapes.

==========================================  =====  ==================================================
``llmq_queue_length``                       gauge  ``{queue}`` jobs waiting (every class and tenant)
``llmq_queue_jobs``                         gauge  ``{queue, priority, tenant}`` jobs waiting
``llmq_queue_running``                      gauge  ``{queue, priority, tenant}`` jobs held by workers
``llmq_queue_oldest_wait_seconds``          gauge  ``{queue, priority}`` age of the oldest waiting job
==========================================  =====  ==================================================

``tenant`` is a tenant named in the ``[tenants]`` configuration, else ``other`` (all the others
summed), so the label's values stay as few as the configuration's tables. Every worker exports the
same values (one schedule in Redis): query them with ``max by (...)``. Per worker process, the job
metrics add ``llmq_jobs_running{priority}`` and the ``llmq_queue_wait_seconds{priority}`` histogram
(``workers/runtime/telemetry.py``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import redis
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from workers.connections.brokerurl import is_amqp
from workers.connections.redisclient import redis_client
from workers.connections.schedview import queue_view
from workers.routes import LLMQConfig
from workers.settings import Settings

__all__ = ["ScheduleCollector", "schedule_collector"]


def schedule_collector(settings: Settings, config: LLMQConfig, client: redis.Redis) -> ScheduleCollector | None:
    """The worker's collector of its queue's schedule: on ``client`` when the broker is that Redis, on a
    client of its own (built at the first scrape) when the queue has a Redis of its own; None on
    RabbitMQ (its queues are RabbitMQ's to report)."""
    broker = settings.broker_url or settings.redis_url
    if is_amqp(broker):
        return None
    if broker == settings.redis_url:
        return ScheduleCollector(lambda: client, settings.queue, config.tenants)
    return ScheduleCollector(
        functools.cache(lambda: redis_client(broker, max_connections=2)), settings.queue, config.tenants
    )


class ScheduleCollector(Collector):
    def __init__(self, client: Callable[[], Any], queue: str, named_tenants: Iterable[str]) -> None:
        self._client = client
        self._queue = queue
        self._named = frozenset(t for t in named_tenants if t != "*")

    def _tenant(self, tenant: str) -> str:
        return tenant if tenant in self._named else "other"

    def collect(self) -> Iterator[GaugeMetricFamily]:
        length = GaugeMetricFamily("llmq_queue_length", "Jobs waiting in the job queue.", labels=["queue"])
        jobs = GaugeMetricFamily(
            "llmq_queue_jobs", "Jobs waiting, by class and tenant.", labels=["queue", "priority", "tenant"]
        )
        running = GaugeMetricFamily(
            "llmq_queue_running", "Jobs held by workers, by class and tenant.", labels=["queue", "priority", "tenant"]
        )
        oldest = GaugeMetricFamily(
            "llmq_queue_oldest_wait_seconds", "Age of the oldest waiting job, by class.", labels=["queue", "priority"]
        )
        try:
            view = queue_view(self._client(), self._queue)
        except redis.RedisError:
            return
        length.add_metric([self._queue], float(view.queued))
        waiting: dict[tuple[str, str], float] = {}
        held: dict[tuple[str, str], float] = {}
        for row in view.tenants:
            key = (row.priority, self._tenant(row.tenant))
            waiting[key] = waiting.get(key, 0.0) + row.queued
            held[key] = held.get(key, 0.0) + row.running
        for (priority, tenant), value in sorted(waiting.items()):
            jobs.add_metric([self._queue, priority, tenant], value)
        for (priority, tenant), value in sorted(held.items()):
            running.add_metric([self._queue, priority, tenant], value)
        for klass in view.classes:
            oldest.add_metric([self._queue, klass.priority], klass.oldest_wait_s or 0.0)
        yield from (length, jobs, running, oldest)

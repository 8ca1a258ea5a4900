"""Where a test's jobs queue (the ``broker`` fixture in tests/conftest.py)."""

from __future__ import annotations

from dataclasses import dataclass

from workers.connections.brokerurl import is_amqp
from workers.settings import Settings

__all__ = ["Broker", "amqp_worker"]


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

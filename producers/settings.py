"""Producer-side settings, from ``LLMQ_*`` environment variables: one object for every entry point.

``Client``, ``AsyncClient``, ``llmq submit``, ``llmq batch`` and the gateway read the Redis URL
and the queue from here, so a producer sends to the queue the worker (``LLMQ_QUEUE``, the same
variable) consumes. Nothing is read at import time: :func:`producer_settings` reads the
environment when called; explicit values (tests, the CLI's flags) win over it.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AfterValidator, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from workers.connections.brokerurl import check_broker_url
from workers.connections.redisurl import check_redis_url
from workers.contract import DEFAULT_QUEUE

__all__ = ["DEFAULT_REDIS_URL", "ProducerSettings", "producer_settings"]

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


class ProducerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LLMQ_", extra="ignore", frozen=True)

    #: Broker, event streams and results (``LLMQ_REDIS_URL``).
    redis_url: Annotated[str, AfterValidator(check_redis_url)] = DEFAULT_REDIS_URL
    #: Where the job queue lives when not in Redis: an ``amqp://`` RabbitMQ URL (``LLMQ_BROKER_URL``);
    #: unset, the Redis URL. Results, events and everything else stay in Redis either way.
    broker_url: Annotated[str | None, AfterValidator(check_broker_url)] = None
    #: Celery queue jobs are sent to; the worker consumes ``LLMQ_QUEUE`` too (``LLMQ_QUEUE``).
    queue: str = Field(default=DEFAULT_QUEUE, min_length=1)
    #: Seconds job metadata is kept (``LLMQ_RESULT_TTL_S``, shared with the worker).
    result_ttl_s: int = Field(default=86_400, ge=1)
    #: Days of job history the workers keep (``LLMQ_HISTORY_DAYS``, shared with the worker): how far
    #: back ``llmq jobs`` and ``GET /v1/jobs`` look.
    history_days: int = Field(default=7, ge=0, le=366)
    #: Seconds a connection attempt to Redis may take before the producer reports it unreachable.
    redis_connect_timeout_s: float = Field(default=5.0, gt=0)
    #: The workers' config file (``LLMQ_CONFIG``): read for the model names it allows while no worker
    #: has published its own (``producers/catalog.py``).
    config: str | None = None
    #: What ``default`` means to the workers (``LLMQ_DEFAULT_MODEL``, the same variable).
    default_model: str = "openai:gpt-4o-mini"
    #: ``llmq submit``: seconds without a sign of a worker on the queue before it says so on stderr.
    worker_check_s: float = Field(default=3.0, gt=0)
    #: Send a Celery ``task-sent`` event with each job, for Flower (``LLMQ_TASK_EVENTS``, shared with
    #: the worker's task events).
    task_events: bool = True
    #: ``task-sent`` events are kept and published in batches at least this often, in milliseconds
    #: (``LLMQ_TASK_EVENTS_FLUSH_MS``, as for workers); 0: each its own publish (``producers/sentevents.py``).
    task_events_flush_ms: int = Field(default=250, ge=0, le=5000)
    #: Submits are refused (``RedisFullError``) once Redis uses this share of its ``maxmemory``, so
    #: running jobs keep room to finish (``LLMQ_REDIS_HIGH_WATERMARK``); 0: no check (a write Redis
    #: refuses at ``maxmemory`` is still ``RedisFullError``). ``producers/watermark.py``.
    redis_high_watermark: float = Field(default=0.9, ge=0, le=1)
    #: Seconds a client reuses its last reading of Redis's memory (``LLMQ_REDIS_MEMORY_CHECK_S``); 0:
    #: read before every submit (one more round trip each).
    redis_memory_check_s: float = Field(default=1.0, ge=0, le=60)

    @property
    def broker(self) -> str:
        """The Celery broker URL: ``broker_url`` or, unset, ``redis_url``."""
        return self.broker_url or self.redis_url


def producer_settings(**overrides: Any) -> ProducerSettings:
    """The environment's settings; ``None`` overrides are ignored (an unset CLI flag)."""
    return ProducerSettings(**{k: v for k, v in overrides.items() if v is not None})

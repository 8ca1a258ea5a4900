"""The worker's ``[scheduling]`` and ``[tenants]`` configuration, published where the schedule lives.

The broker's scripts (``workers/connections/lua``) decide who runs next in Redis and read their
weights and caps from one hash there; the producers' admission reads ``max_queued`` from it too. A
worker writes it at start from its routes file (all workers of a deployment share one file; a
worker started with another one replaces it, and says so). On RabbitMQ there is no schedule in
Redis: the worker uses the class weights itself (``workers/runtime/classpool.py``).
"""

from __future__ import annotations

import logging

from workers.connections.redisclient import redis_client
from workers.connections.schedule import conf_fields, publish_conf
from workers.routes import LLMQConfig
from workers.settings import Settings

__all__ = ["publish_schedule", "schedule_fields"]

log = logging.getLogger("llmq.worker")


def schedule_fields(config: LLMQConfig) -> dict[str, str]:
    """The published fields of a routes file."""
    sched = config.scheduling
    return conf_fields(
        weights={str(c): w for c, w in sched.weights.items()},
        key_concurrency=sched.key_concurrency,
        keys=sched.keys,
        retry_after_s=sched.queue_full_retry_after_s,
        tenants={name: tenant.model_dump() for name, tenant in config.tenants.items()},
    )


def publish_schedule(settings: Settings, config: LLMQConfig) -> None:
    """Write the configuration to the broker's Redis (nothing on RabbitMQ)."""
    from workers.connections.brokerurl import is_amqp

    url = settings.broker_url or settings.redis_url
    if is_amqp(url):
        return
    client = redis_client(url, max_connections=2, socket_connect_timeout=5)
    try:
        if publish_conf(client, schedule_fields(config)):
            log.warning(
                "scheduling: replaced the weights and limits another worker published (workers should share "
                "one [scheduling] / [tenants] configuration; the last one started wins)"
            )
    finally:
        client.close()

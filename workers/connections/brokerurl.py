"""Which broker a URL names, and how the job queue is declared on RabbitMQ.

``LLMQ_BROKER_URL`` moves only the Celery job queue; results, events, the ledger and the guards stay
in Redis (``LLMQ_REDIS_URL``). Unset, the broker is the Redis URL. On ``amqp://`` the queue is a
durable *quorum* queue bound to a topic exchange of the same name: RabbitMQ keeps it on disk and
replicated, redelivers a dead consumer's messages as soon as its connection drops, and Celery's
native delayed delivery (the ``celery_delayed_*`` exchanges) carries re-queues with a countdown,
which needs a topic (not direct) exchange. Shared by the worker and every producer so both declare
the queue identically (RabbitMQ refuses a redeclaration with other arguments).
"""

from __future__ import annotations

from urllib.parse import urlsplit

from workers.connections.redisurl import check_redis_url
from workers.contract.schedule import class_queues

__all__ = ["AMQP_SCHEMES", "QUORUM_ARGUMENTS", "amqp_conf", "check_broker_url", "is_amqp"]

AMQP_SCHEMES = frozenset({"amqp", "amqps", "pyamqp"})
QUORUM_ARGUMENTS: dict[str, object] = {"x-queue-type": "quorum"}


def check_broker_url(url: str | None) -> str | None:
    """``LLMQ_BROKER_URL`` checked: unset, a RabbitMQ URL or a Redis one; else ``ValueError`` naming both."""
    if url is None or not url.strip():
        return None
    url = url.strip()
    if is_amqp(url):
        return url
    try:
        return check_redis_url(url)
    except ValueError:
        scheme = urlsplit(url).scheme
        raise ValueError(
            f"a broker URL is amqp:// (RabbitMQ) or a Redis URL (redis://, rediss://, unix://, sentinel://); "
            f"got {scheme + '://' if scheme else 'no scheme'}"
        ) from None


def is_amqp(url: str) -> bool:
    """True for a RabbitMQ URL (``amqp://``, ``amqps://``, ``pyamqp://``)."""
    return urlsplit(url).scheme.lower() in AMQP_SCHEMES


def amqp_conf(queue: str) -> dict[str, object]:
    """Celery settings declaring the job queues on RabbitMQ: one per scheduling class (the job queue
    itself for ``normal``, ``<queue>.interactive`` and ``<queue>.bulk``,
    ``workers/contract/schedule.py``), each durable and quorum, all on one durable topic exchange
    named after the job queue, bound by their own names (Celery's native delayed delivery, which
    carries countdown re-queues on quorum queues, skips direct exchanges). Plain data (Celery builds
    the kombu ``Queue``)."""
    return {
        "task_queues": {
            name: {
                "exchange": queue,
                "exchange_type": "topic",
                "exchange_durable": True,
                "routing_key": name,
                "durable": True,
                "queue_arguments": dict(QUORUM_ARGUMENTS),
            }
            for name in class_queues(queue).values()
        },
        "task_default_queue": queue,
        "task_default_exchange": queue,
        "task_default_exchange_type": "topic",
        "task_default_routing_key": queue,
        "task_create_missing_queues": False,
        # quorum queues refuse global QoS: Celery detects them and uses per-consumer prefetch
        "worker_detect_quorum_queues": True,
    }

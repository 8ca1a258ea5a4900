"""On RabbitMQ the classes work too: a quorum queue per class, started by weight in the worker.

A real RabbitMQ (a vhost of the test's own), an in-process worker with llmqueue's thread pool (the
one ``llmq worker --pool threads`` runs, which starts held jobs by class weight on RabbitMQ:
``workers/runtime/classpool.py``), the simulator, a producer that sends each job to its class's
queue. Asserted, by completion order: an interactive job does not wait behind a bulk backlog, and
while both classes have jobs held, starts split by weight (8 : 1 by default), not first come first
served and not strictly.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import pytest
import redis
from celery.contrib.testing.worker import start_worker
from kombu import Connection

from producers import Client
from producers.settings import ProducerSettings
from simulator.app import SimulatorThread
from simulator.env import provider_env
from tests.support.brokers import Broker
from tests.support.waits import until
from workers.contract import CompletionResult
from workers.contract.schedule import class_queues
from workers.runtime.app import close_runner, create_app
from workers.settings import Settings

pytestmark = pytest.mark.parametrize("broker", ["amqp"], indirect=True)

SLOTS = 4


@pytest.fixture
def amqp_client(redis_url: str, broker: Broker) -> Iterator[Client]:
    with Client(settings=ProducerSettings(redis_url=redis_url, broker_url=broker.url, queue=broker.queue)) as c:
        yield c
    with Connection(broker.url) as conn:  # the class queues the conftest does not know about
        for name in class_queues(broker.queue).values():
            if name != broker.queue:
                conn.default_channel.queue_delete(name)


def _worker(redis_url: str, broker: Broker, simulator: SimulatorThread) -> object:
    settings = Settings(
        redis_url=redis_url, broker_url=broker.url, queue=broker.queue, pool="threads", concurrency=SLOTS,
        coalesce_ms=20.0, claim_lease_s=10,
    )  # fmt: skip
    app = create_app(settings, provider_env=provider_env(simulator.url))
    # with Celery's event heartbeat: its timer is what wakes the otherwise idle amqp event loop
    pool = "workers.runtime.pool:ThreadPool"
    return app, start_worker(
        app, pool=pool, concurrency=SLOTS, perform_ping_check=False, shutdown_timeout=10, without_heartbeat=False
    )


def _job(job_id: str, priority: str, reply: str) -> dict[str, object]:
    return {
        "id": job_id, "model": "openai:gpt-4o-mini", "messages": [{"role": "user", "content": job_id}],
        "max_tokens": 5, "stream": False, "priority": priority, "reply_to": reply,
    }  # fmt: skip


def test_classes_start_by_weight_and_interactive_passes_a_bulk_backlog_on_rabbitmq(
    redis_url: str, redis_client: redis.Redis, broker: Broker, simulator: SimulatorThread, amqp_client: Client
) -> None:
    simulator.simulator.config.latency = 0.2
    reply = "llmq:reply:amqp-classes"
    for n in range(40):
        amqp_client.submit(_job(f"bulk-{n}", "bulk", reply))
    for n in range(40):
        amqp_client.submit(_job(f"web-{n}", "interactive", reply))
    app, worker = _worker(redis_url, broker, simulator)
    with worker:
        until(lambda: redis_client.llen(reply) >= 27, "27 completions", 120)
        first = [
            CompletionResult.model_validate_json(raw).id.split("-")[0] for raw in redis_client.lrange(reply, 0, 26)
        ]
        # both held from the start: 8 : 1, not all 40 bulk first (FIFO) and not 0 bulk (strict)
        counts = Counter(first)
        print(f"first 27 completions on RabbitMQ: {dict(counts)}")
        assert counts["web"] >= 20 and counts["bulk"] >= 2, counts
        until(lambda: redis_client.llen(reply) >= 80, "every job to end", 120)
        # a bulk backlog again, then one interactive job: it runs in the first slot that frees
        for n in range(60):
            amqp_client.submit(_job(f"more-{n}", "bulk", reply))
        until(lambda: redis_client.llen(reply) >= 80 + SLOTS, "the backlog to run", 120)
        before = redis_client.llen(reply)
        amqp_client.submit(_job("late-web", "interactive", reply))
        result = amqp_client.result("late-web", timeout=120)
        order = [CompletionResult.model_validate_json(raw).id for raw in redis_client.lrange(reply, before, -1)]
        assert result.status == "succeeded"
        assert order.index("late-web") + 1 <= 2 * SLOTS, order  # not behind the 56 bulk jobs left
        until(lambda: redis_client.llen(reply) >= 141, "every job to end", 180)
    close_runner(app)

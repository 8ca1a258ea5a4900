"""``LLMQ_BROKER_URL``: the worker and the producers declare the same RabbitMQ quorum queue; Redis stays the default."""

from __future__ import annotations

from producers.client import make_celery
from workers.connections.brokerurl import is_amqp
from workers.runtime.app import create_app
from workers.runtime.broker import transport_for
from workers.settings import Settings

AMQP = "amqp://guest:guest@rabbit:5672/llmq"


def test_only_amqp_urls_name_rabbitmq() -> None:
    assert is_amqp(AMQP) and is_amqp("amqps://h//") and is_amqp("pyamqp://h//")
    assert not is_amqp("redis://h:6379/0") and not is_amqp("sentinel://h:26379/0") and not is_amqp("unix:///tmp/r.sock")


def test_unset_the_broker_is_the_redis_url_with_the_heartbeat_transport() -> None:
    app = create_app(Settings(redis_url="redis://h:6379/3", queue="jobs"))
    assert app.conf.broker_url == "redis://h:6379/3"
    assert app.conf.broker_transport_options["heartbeat_interval"] == Settings().heartbeat_s
    assert transport_for(app.conf.broker_url) == "workers.runtime.broker:Transport"
    assert app.conf.task_default_queue == "jobs" and not app.conf.task_queues


def test_an_amqp_broker_gets_a_quorum_queue_on_a_topic_exchange_and_kombus_transport() -> None:
    app = create_app(Settings(redis_url="redis://h:6379/3", broker_url=AMQP, queue="jobs"))
    assert app.conf.broker_url == AMQP
    assert app.conf.broker_transport_options == {}  # none of the Redis transport's options
    assert transport_for(AMQP) is None  # kombu's own amqp transport, not the Redis heartbeat one
    queue = app.amqp.queues["jobs"]
    assert queue.queue_arguments == {"x-queue-type": "quorum"} and queue.durable
    assert queue.exchange.name == "jobs" and queue.exchange.type == "topic" and queue.routing_key == "jobs"
    assert app.conf.worker_detect_quorum_queues
    # the task routes to that queue, so a countdown re-queue takes Celery's native delayed delivery
    assert app.amqp.router.route({}, "llmq.run_job")["queue"] is queue
    assert app.llmq.settings.redis_url == "redis://h:6379/3"  # results, events, ledger: still Redis


def test_producers_declare_the_queue_exactly_as_the_worker_does() -> None:
    worker = create_app(Settings(broker_url=AMQP, queue="jobs")).amqp.queues["jobs"]
    producer_app = make_celery(AMQP, "jobs")
    producer = producer_app.amqp.queues["jobs"]
    # RabbitMQ refuses to redeclare a queue with other arguments: every field must match
    assert producer.as_dict(recurse=True) == worker.as_dict(recurse=True)
    assert make_celery("redis://h:6379/0", "jobs").conf.task_default_queue == "jobs"

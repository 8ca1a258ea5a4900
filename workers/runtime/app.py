"""The Celery application, built from settings: ``celery -A workers.runtime.app worker -P gevent``.

Configured for long, I/O-bound jobs: late acks (a job lost with its worker runs again; jobs are
idempotent by id), prefetch 1 (a worker holds no more jobs than it can run; its transport refills a
freed slot within 50 ms), a short visibility timeout backed by heartbeats (a dead worker's jobs move
within seconds, however long a job runs), kombu's Redis pool sized above the concurrency (its
default of 10 loses acks under gevent and runs jobs twice), JSON only, task events on for Flower,
and no Celery result backend: results live in our own store.

Importing this module builds the app object (which connects to nothing); the per-process
resources (HTTP client, Redis pool, providers) are built on the first job.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping
from typing import TYPE_CHECKING

from celery.exceptions import CPendingDeprecationWarning
from celery.signals import celeryd_after_setup, setup_logging, worker_init, worker_shutdown

from workers.connections.brokerurl import amqp_conf, is_amqp
from workers.connections.redisurl import kombu_broker
from workers.contract import DEFAULT_QUEUE, TASK_NAME
from workers.runtime.broker import install_transport, transport_for
from workers.runtime.collector import settle_collector
from workers.runtime.state import AppState, LLMQCelery
from workers.runtime.task import register_tasks
from workers.runtime.taskevents import TaskEventBatching
from workers.settings import Settings, get_settings

if TYPE_CHECKING:
    from workers.jobs.pipeline import JobRunner

__all__ = ["LLMQCelery", "app", "close_runner", "create_app", "runner_for"]


def create_app(settings: Settings | None = None, *, provider_env: Mapping[str, str] | None = None) -> LLMQCelery:
    """Build the Celery app. ``provider_env`` replaces ``os.environ`` as the source of provider
    keys and base URLs (a seam for tests and embedding; it is never serialized)."""
    settings = settings or get_settings()
    app = LLMQCelery("llmqueue", set_as_current=False)
    transport: dict[str, object] = {
        # held messages are re-scored every heartbeat (workers/runtime/broker.py): this is how long a
        # dead worker's jobs wait, not a bound on job length
        "visibility_timeout": settings.visibility_timeout,
        "heartbeat_interval": settings.heartbeat_s,
        # acks leave Redis in batches (their credit comes back at once)
        "ack_flush_ms": settings.ack_flush_ms,
        # sweep for abandoned (unacked, timed-out) messages every few seconds, not kombu's ~100 s
        "unacked_restore_interval": max(1, min(5, settings.visibility_timeout // 3)),
        "unacked_restore_throttle": 1,
        # a worker killed inside a sweep leaves its mutex behind: kombu's 300 s would stall recovery
        "unacked_mutex_expire": max(10, settings.visibility_timeout),
        "max_connections": settings.concurrency + 20,
        "socket_keepalive": True,
        "health_check_interval": 30,
    }
    broker_url = settings.broker_url or settings.redis_url
    queue = settings.queue or DEFAULT_QUEUE
    prefetch = settings.effective_prefetch
    if is_amqp(broker_url):
        # RabbitMQ (workers/connections/brokerurl.py): a quorum queue per class; a dead consumer's unacked
        # messages return when its connection drops, so none of the Redis transport's options apply.
        # Each class queue's consumer holds up to two windows (unless set), so that when a slot frees
        # the worker still holds a job of the class whose turn it is (workers/runtime/classpool.py);
        # RabbitMQ hands each consumer's messages out round-robin, so a burst still spreads over workers
        prefetch = settings.prefetch_multiplier or 2
        transport = {}
        app.conf.update(amqp_conf(queue), broker_native_delayed_delivery_queue_type="quorum")
    else:
        # Redis Sentinel (workers/connections/redisurl.py): kombu asks the sentinels for the master
        broker_url, options = kombu_broker(broker_url)
        transport.update(options)
        app.conf.update(task_default_queue=queue)
    app.conf.update(
        broker_url=broker_url,
        broker_transport_options=transport,
        broker_connection_retry_on_startup=True,
        broker_pool_limit=max(10, settings.concurrency // 4),
        result_backend=None,
        # Celery's (disabled) result backend is built per thread unless marked thread-safe, and
        # gevent makes every job a thread: one backend object per job was ~3 % of a short job's CPU
        result_backend_thread_safe=True,
        result_backend_transport_options={"visibility_timeout": settings.visibility_timeout},
        task_ignore_result=True,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_acks_on_failure=True,
        worker_prefetch_multiplier=prefetch,
        task_time_limit=settings.task_time_limit,
        worker_soft_shutdown_timeout=settings.soft_shutdown_timeout,
        # a lost broker connection does not cancel running jobs: they ride the outage out (their own
        # Redis calls retry, their claims fence a second run of a job restored meanwhile), and an
        # ack the old connection could not send only re-runs a finished job, which stops at its stored
        # result. Set explicitly, which is also Celery 6's announced default to refuse.
        worker_cancel_long_running_tasks_on_connection_loss=False,
        # Flower's feed, sent in batches (workers/runtime/taskevents.py, LLMQ_TASK_EVENTS_FLUSH_MS);
        # LLMQ_TASK_EVENTS=0 turns them off (Flower can still switch them on at run time with `enable_events`)
        worker_send_task_events=settings.task_events,
        task_send_sent_event=settings.task_events,
        task_routes={TASK_NAME: {"queue": queue}},
        worker_hijack_root_logger=False,
        worker_concurrency=settings.concurrency,
        # threads: ours, which can hand running jobs back when a graceful shutdown's window ends
        worker_pool="gevent" if settings.pool == "gevent" else "workers.runtime.pool:ThreadPool",
    )
    app.llmq = AppState(settings, provider_env=provider_env)
    # task events in batches, one publish per flush period instead of one per event (any pool)
    app.steps["consumer"].add(TaskEventBatching)
    register_tasks(app)
    return app


def runner_for(app: LLMQCelery) -> JobRunner:
    """The app's JobRunner, built once per process on first use (after any fork or patching)."""
    return app.llmq.runner()


def close_runner(app: LLMQCelery) -> None:
    app.llmq.close()


app = create_app()

#: Celery's warning at each broker connection loss while the setting is False (any wording around it).
_CANCEL_ON_LOSS_NOTICE = r"(?s).*worker_cancel_long_running_tasks_on_connection_loss"
#: Celery's warning, at every gevent worker's start, that the ``worker_pool`` setting selects gevent
#: too late to patch the process: it fires whenever the setting names gevent, even under ``-P gevent``.
_POOL_SETTING_NOTICE = r"\s*The worker_pool setting shouldn't be used to select the eventlet/gevent"


def _quiet_known_notices() -> None:
    """Filter two of Celery's warnings that do not apply to an ``llmq worker``."""
    # the choice is deliberate (the worker rides out a lost broker): Celery's notice about its future
    # default would be printed to the operator, eight lines, at every broker reconnect
    warnings.filterwarnings("ignore", _CANCEL_ON_LOSS_NOTICE, CPendingDeprecationWarning)
    from kombu.utils.compat import detect_environment

    if detect_environment() == "gevent":
        # patched already, so started with -P gevent (``llmq worker``): the warning does not apply (a
        # bare ``celery worker`` without -P, which it is for, is not patched here and still gets it)
        warnings.filterwarnings("ignore", _POOL_SETTING_NOTICE, UserWarning)


@celeryd_after_setup.connect
def _after_celery_setup(**_: object) -> None:
    """Once more after Celery's logging set-up, which puts ``always`` for its deprecation warnings in
    front of every filter (``celery/app/log.py``) and so undid the one :func:`_on_worker_init` set."""
    _quiet_known_notices()


@worker_init.connect
def _on_worker_init(sender: object = None, **_: object) -> None:
    """Build the worker's resources before the first job, redact secrets in logs, serve metrics.

    Refuses a Redis older than the job queue needs (``workers/runtime/redischeck.py``). Also picks
    the worker's broker transport (``workers/runtime/broker.py``) before its consumer connects;
    only here, so producers and Flower keep plain ``redis://`` URIs.
    """
    worker_app = getattr(sender, "app", None)
    if not isinstance(worker_app, LLMQCelery):
        return
    if not worker_app.conf.broker_transport:
        worker_app.conf.broker_transport = transport_for(worker_app.conf.broker_url)
    install_transport()  # also where a fail-over to the next broker URL would pick kombu's own
    from workers.runtime.telemetry import install_log_redaction, serve_metrics

    install_log_redaction()
    _quiet_known_notices()
    from workers.llm.errors import ConfigurationError
    from workers.runtime.redischeck import check_broker_redis, check_state_redis

    settings = worker_app.llmq.settings
    try:
        # a Redis too old for the queue's BLMOVE: refused here, not a worker that fails every wait
        check_broker_redis(settings.broker_url or settings.redis_url)
        check_state_redis(settings.redis_url, settings.broker_url)
        resources = worker_app.llmq.resources()
        # the schedule's weights and caps, where the broker's scripts read them (workers/runtime/schedconf.py)
        from workers.runtime.schedconf import publish_schedule

        publish_schedule(settings, resources.config)
        # provider batches: this worker's batcher (one at a time across the workers does the work)
        from workers.runtime.batcher import start_batcher

        resources.batcher = start_batcher(worker_app, settings, resources)
    except ConfigurationError as exc:
        # Celery logs and swallows a signal handler's exceptions; a worker that cannot load its
        # configuration or tool modules must not start taking jobs. The reason is the log line (in the
        # log format the operator chose); the exit status says "refused to start", as every llmq
        # command's does: 2, no second copy of the reason
        logging.getLogger("llmq.worker").critical("llmq worker cannot start: %s", exc)
        raise SystemExit(2) from exc
    port = settings.metrics_port
    if port:
        serve_metrics(resources.metrics.registry, port)
    # Everything built so far lives as long as the process: moved out of the collector's sight, so
    # the collections a job's allocations trigger do not re-scan the ~110k objects of imports,
    # settings and clients (and a prefork child does not copy them by touching their GC headers):
    # -1.5 % worker CPU per job (bench/observability_bench.py). And young collections sized for
    # jobs whose objects live as long as they do (workers/runtime/collector.py).
    settle_collector(settings.gc_young_threshold)


@setup_logging.connect
def _on_setup_logging(loglevel: object = None, **_: object) -> None:
    """Our handler instead of Celery's: JSON lines (``LLMQ_LOG_FORMAT``) with trace ids, redacted.

    Connecting here is what tells Celery not to configure logging itself."""
    from workers.runtime.logs import configure_logging

    level = loglevel if isinstance(loglevel, int) else logging.INFO
    configure_logging(get_settings().log_format, level=level)


@worker_shutdown.connect
def _on_shutdown(sender: object = None, **_: object) -> None:
    worker_app = getattr(sender, "app", None)
    close_runner(worker_app if isinstance(worker_app, LLMQCelery) else app)

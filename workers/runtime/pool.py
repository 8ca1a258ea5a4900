"""The worker pools, able to hand running jobs back at the end of a graceful shutdown.

Celery's cold shutdown (SIGTERM under ``llmq worker``) lets running jobs finish for up to
``worker_soft_shutdown_timeout`` seconds (``workers/runtime/shutdown.py``), then cancels what is left
through the pool's ``terminate_job`` (a second SIGTERM does so at once). Celery's threads pool does not
implement it (a thread cannot be killed), and Celery's gevent pool kills the job's greenlet: the kill
ends the task as if it had returned, so Celery acks its message and the job is lost. Here both stop
every running job of the process through the runner (``JobRunner.hand_back_all``): each run ends its
upstream call, writes no ending, frees its claim, and its task re-queues the job (late acks), so another
worker runs it. ``-P gevent`` gets :class:`GeventPool` from the worker class
(``LLMQWorker.on_init_blueprint``), as the command line names Celery's own.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from celery.concurrency.gevent import TaskPool as CeleryGeventPool
from celery.concurrency.thread import TaskPool as CeleryThreadPool

from workers.connections.brokerurl import is_amqp
from workers.routes import load_config
from workers.runtime.classpool import ClassDispatcher, priority_of
from workers.runtime.handback import running_jobs
from workers.settings import Settings

__all__ = ["GeventPool", "ThreadPool"]

log = logging.getLogger("llmq.worker")


def _hand_back_all(app: Any) -> None:
    jobs = running_jobs(app)
    if jobs is not None:
        jobs.hand_back_all()


def _class_dispatcher(app: Any, acquire: Callable[[], object]) -> ClassDispatcher | None:
    """On RabbitMQ, the dispatcher that starts held jobs by class weight (``classpool.py``); None on
    Redis, whose broker already decided (and a worker holds no more jobs than its slots)."""
    settings: Settings | None = getattr(getattr(app, "llmq", None), "settings", None)
    if settings is None or not is_amqp(settings.broker_url or settings.redis_url):
        return None
    weights = {str(c): w for c, w in load_config(settings.config).scheduling.weights.items()}
    return ClassDispatcher(weights, acquire=acquire)


class ThreadPool(CeleryThreadPool):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._slots = threading.Semaphore(self.limit)
        self.dispatcher = _class_dispatcher(self.app, self._slots.acquire)

    def on_apply(self, target: Any, args: Any = None, kwargs: Any = None, *more: Any, **options: Any) -> Any:
        dispatcher = self.dispatcher
        if dispatcher is None:
            return super().on_apply(target, args, kwargs, *more, **options)

        def start() -> None:
            result = super(ThreadPool, self).on_apply(target, args, kwargs, *more, **options)
            result.f.add_done_callback(lambda _: self._slots.release())

        dispatcher.submit(priority_of(args), start)
        return None

    def on_stop(self) -> None:
        if self.dispatcher is not None:
            self.dispatcher.stop()
        super().on_stop()

    def terminate_job(self, pid: Any, signal: Any = None) -> None:
        _hand_back_all(self.app)


def _terminate_nothing(signal: Any = None) -> None:
    """A job greenlet's ``terminate`` (Celery calls it after ``terminate_job``, which did the work)."""


def _without_cycle(greenlet: Any) -> Any:
    """``greenlet`` with Celery's no-op ``terminate`` replaced by one that does not refer back to it.

    Celery sets it as a method bound to the greenlet, in the greenlet's own ``__dict__``: a reference
    cycle, so an ended job's greenlet (and its context: every context variable the job set) lived
    until the cyclic GC ran, ~200 of them at a time in a busy worker. Without the cycle it is freed
    as soon as the job ends and the pool drops it."""
    greenlet.terminate = _terminate_nothing
    return greenlet


class GeventPool(CeleryGeventPool):
    """Celery's gevent pool that hands jobs back, and whose background loop dies quietly with the broker.

    Celery runs one loop beside the jobs with ``spawn_n``: the remote-control (pidbox) loop
    (``celery/worker/pidbox.py``, ``gPidbox.loop``). When the broker connection drops (a Redis restart),
    that loop ends with the connection error and gevent's hub prints its three chained tracebacks to
    stderr, although nothing is wrong: the consumer reconnects and starts a new loop. Here it ends with
    one warning line instead; any other error still propagates (and is printed) as before.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        from gevent import spawn_raw

        super().__init__(*args, **kwargs)
        self.spawn_n = lambda fn, *a, **kw: spawn_raw(self._quiet_on_broker_loss, fn, *a, **kw)
        self.dispatcher: ClassDispatcher | None = None

    def on_start(self) -> None:
        super().on_start()
        # the gevent pool exists from here on: wait for one of its slots before choosing the next job
        pool = self._pool  # type: ignore[attr-defined]  # Celery's, which its stubs omit
        self.dispatcher = _class_dispatcher(self.app, pool.wait_available)

    def on_apply(self, target: Any, args: Any = None, kwargs: Any = None, *more: Any, **options: Any) -> Any:
        dispatcher = self.dispatcher
        if dispatcher is None:
            return _without_cycle(super().on_apply(target, args, kwargs, *more, **options))
        dispatcher.submit(
            priority_of(args),
            lambda: _without_cycle(super(GeventPool, self).on_apply(target, args, kwargs, *more, **options)),
        )
        return None

    def on_stop(self) -> None:
        if self.dispatcher is not None:
            self.dispatcher.stop()
        super().on_stop()

    def _quiet_on_broker_loss(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        errors = self._broker_errors()
        try:
            return fn(*args, **kwargs)
        except errors as exc:
            log.warning("remote control lost the broker (%s); it comes back with the consumer's reconnection", exc)
            return None

    def _broker_errors(self) -> tuple[type[BaseException], ...]:
        """The broker transport's connection errors (what kombu's reconnect handles)."""
        with self.app.connection_for_read() as conn:  # builds the transport, connects nothing
            return tuple(conn.connection_errors)

    def terminate_job(self, pid: Any, signal: Any = None) -> None:
        # the greenlets end by themselves once their runs stopped (the pool's stop waits for them)
        _hand_back_all(self.app)

"""The threads pool, able to hand running jobs back at the end of a graceful shutdown.

Celery's cold shutdown (SIGTERM under ``llmq worker``) lets running jobs finish for
``worker_soft_shutdown_timeout`` seconds, then cancels what is left through the pool's
``terminate_job``, which Celery's threads pool does not implement (a thread cannot be killed).
Here it stops every running job of the process through the runner (``JobRunner.hand_back_all``):
each run ends its upstream call, writes no ending, frees its claim, and its task re-queues the
job (late acks), so another worker runs it. The gevent pool kills its greenlets itself; the same
hand-back then happens through the task's cleanup and the unacked restore.
"""

from __future__ import annotations

from typing import Any

from celery.concurrency.thread import TaskPool as CeleryThreadPool

__all__ = ["ThreadPool"]


class ThreadPool(CeleryThreadPool):
    def terminate_job(self, pid: Any, signal: Any = None) -> None:
        from workers.runtime.app import app

        state = app.llmq
        if state.built:
            state.runner().hand_back_all()

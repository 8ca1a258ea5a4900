"""SIGTERM under ``llmq worker``: Celery's soft shutdown, safe under gevent and over once no job runs.

Why. ``llmq worker`` remaps SIGTERM to Celery's cold shutdown with a soft window
(``worker_soft_shutdown_timeout``, ``LLMQ_SOFT_SHUTDOWN_TIMEOUT``): Celery's handler
(``celery/apps/worker.py`` ``on_cold_shutdown``) sleeps the whole window inside the signal handler
(``WorkController.wait_for_soft_shutdown``), then hands back what still runs. Two faults followed:

* Under gevent, Python runs a signal handler in whatever greenlet is current. In the hub, the sleep
  raised ``BlockingSwitchOutError`` and the worker exited with 1 (its jobs died with it; late acks
  restored them only after the visibility timeout); in a job's greenlet, that job was frozen for the
  window. Meanwhile the consumer kept taking and starting new jobs.
* The wait was always the whole window (60 s by default), even when the running jobs ended in a
  second: a worker with one short job took a minute to stop, and Docker's 10 s grace killed it.

What. :class:`LLMQWorker` is the app's ``Worker`` class (``LLMQCelery.Worker``, what ``celery worker``
builds); Celery's handlers and shutdown sequence stay Celery's, two of its methods change:

* :meth:`LLMQWorker.install_platform_tweaks`: under gevent, the handlers Celery installs for SIGTERM,
  SIGQUIT and SIGINT each run in a greenlet of their own (:class:`GreenSignals`), never in the
  greenlet the signal interrupted; handlers Celery installs during a shutdown (a second signal's) are
  wrapped the same way.
* :meth:`LLMQWorker.wait_for_soft_shutdown`: the worker stops taking jobs at once (the runner hands a
  job that starts from now on back to the queue before claiming it; under gevent the task consumer is
  also cancelled, from the consumer's own loop), then waits, polling, until no request is active or
  the window ends.
  Celery's ``on_cold_shutdown`` then hands back what still runs through the pool
  (``workers/runtime/pool.py``: under both pools the runner stops the runs and their tasks re-queue
  their messages; :meth:`LLMQWorker.on_init_blueprint` puts our gevent pool in place of Celery's, whose
  kill would have acked, so lost, the job).

Under ``-P threads`` the handler runs in the main thread, as Celery means it: the consumer's loop waits
with it, so nothing new is fetched; jobs already handed to the pool and not started are handed back by
the runner. A second SIGTERM, SIGQUIT or Ctrl-C during the window is Celery's ``during_soft_shutdown``:
it cancels the running jobs at once, so the wait ends and the cold shutdown completes; a third is the
hard exit. A clean stop exits with 0, as Celery's cold shutdown does.
"""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Callable, Iterable
from types import FrameType
from typing import Any

from celery.apps.worker import Worker
from celery.signals import worker_shutdown
from celery.worker import state as worker_state
from kombu.utils.compat import detect_environment

from workers.runtime.handback import running_jobs

__all__ = ["SHUTDOWN_SIGNALS", "GreenSignals", "LLMQWorker"]

log = logging.getLogger("llmq.worker")

#: The signals whose Celery handlers start or force a shutdown (and so wait, or do I/O).
SHUTDOWN_SIGNALS = ("SIGTERM", "SIGQUIT", "SIGINT")
#: How often the soft window checks whether jobs are still running.
POLL_S = 0.1

_Handler = Callable[[int, FrameType | None], Any]


class _InGreenlet:
    """A signal handler that runs ``handler`` in a new greenlet, then re-wraps what it installed."""

    def __init__(self, handler: _Handler, after: Callable[[], None]) -> None:
        self.handler = handler
        self._after = after

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        import gevent

        # spawning only schedules: safe in any greenlet, the hub included
        gevent.spawn(self._run, signum, frame)

    def _run(self, signum: int, frame: FrameType | None) -> None:
        try:
            self.handler(signum, frame)
        finally:
            # Celery's handlers install the next stage's handlers (a second signal's)
            self._after()


class GreenSignals:
    """Makes the Python handlers of ``names`` run each in a new greenlet (gevent only).

    :meth:`install` wraps each handler in place that is not wrapped yet; call it again after code that
    installs handlers (it is idempotent). Main thread only, as :func:`signal.signal` is."""

    def __init__(self, names: Iterable[str] = SHUTDOWN_SIGNALS) -> None:
        self._signums = [getattr(signal, name) for name in names if hasattr(signal, name)]

    def install(self) -> None:
        for signum in self._signums:
            handler = signal.getsignal(signum)
            if callable(handler) and not isinstance(handler, _InGreenlet):
                signal.signal(signum, _InGreenlet(handler, self.install))


class LLMQWorker(Worker):
    """Celery's worker program with a soft shutdown that ends once no job runs (module docstring)."""

    _green_signals: GreenSignals | None = None
    pool_cls: Any  # Celery's, set in its __init__

    def on_init_blueprint(self) -> None:
        super().on_init_blueprint()
        if detect_environment() == "gevent":
            from celery.concurrency.gevent import TaskPool as CeleryGeventPool

            from workers.runtime.pool import GeventPool

            if self.pool_cls is CeleryGeventPool:
                # ours hands running jobs back instead of killing them (workers/runtime/pool.py)
                self.pool_cls = GeventPool

    def terminate(self, in_sighandler: bool = False) -> None:
        """Celery's cold shutdown (what SIGTERM is for ``llmq worker``: ``REMAP_SIGTERM=SIGQUIT``),
        which unlike a warm stop sends no ``worker_shutdown``: without it the worker's resources were
        never closed, so settlements Redis still refused were neither tried last nor journaled (paid
        calls missing from the ledger). Sent here once the worker is torn down (idempotent close)."""
        super().terminate(in_sighandler)
        pool: Any = self.pool
        if not in_sighandler or (pool is not None and pool.signal_safe):  # torn down now
            worker_shutdown.send(sender=self)

    def install_platform_tweaks(self, worker: Any) -> None:
        super().install_platform_tweaks(worker)
        if detect_environment() == "gevent":
            self._green_signals = GreenSignals()
            self._green_signals.install()

    def wait_for_soft_shutdown(self) -> bool:
        """Stop taking jobs, then wait until none runs or ``worker_soft_shutdown_timeout`` passed.

        Returns True when no job runs anymore. Called by Celery's ``on_cold_shutdown``, in the
        signal's greenlet under gevent (in the main thread's handler under threads)."""
        if self._green_signals is not None:
            # on_cold_shutdown has just installed the handlers of a second signal: they too must not
            # run in the hub or a job's greenlet
            self._green_signals.install()
        self._stop_taking_jobs()
        conf = self.app.conf
        if conf.worker_enable_soft_shutdown_on_idle:
            # Celery's meaning: wait the whole window even with no job running
            super().wait_for_soft_shutdown()
            return not worker_state.active_requests
        timeout = float(conf.worker_soft_shutdown_timeout or 0)
        running = len(worker_state.active_requests)
        if timeout <= 0 or not running:
            return not running
        log.warning("soft shutdown: waiting up to %g s for %d running job(s)", timeout, running)
        deadline = time.monotonic() + timeout
        while worker_state.active_requests:
            left = deadline - time.monotonic()
            if left <= 0:
                log.warning(
                    "soft shutdown: %d job(s) still running after %g s, handing them back",
                    len(worker_state.active_requests),
                    timeout,
                )
                return False
            time.sleep(min(POLL_S, left))
        log.warning("soft shutdown: no job running, stopping")
        return True

    def _stop_taking_jobs(self) -> None:
        jobs = running_jobs(self.app)
        if jobs is not None:
            # jobs already received (prefetched, or waiting for a pool slot) go back untouched
            jobs.stop_taking_jobs()
        consumer = getattr(self, "consumer", None)
        if consumer is None:
            return
        # the broker's fetch takes nothing from now on (workers/runtime/broker.py): a job handed back
        # below (the window ran out, or a second signal) is not fetched again by this leaving worker
        task_consumer = getattr(consumer, "task_consumer", None)
        stop_taking = getattr(getattr(task_consumer, "channel", None), "stop_taking", None)
        if stop_taking is not None:
            stop_taking()
        if consumer.hub is not None:
            # with an event loop (threads) the loop waits for this handler: nothing is fetched meanwhile
            return

        def cancel() -> None:
            task_consumer = consumer.task_consumer
            if task_consumer is not None:
                try:
                    task_consumer.cancel()
                except Exception:  # Celery cancels again after the window (and ignores errors)
                    log.warning("soft shutdown: stopping the task consumer failed", exc_info=True)

        # gevent: the consumer's loop goes on beside this greenlet; cancel from that loop (its next turn,
        # within a fetch timeout), never beside a read it has under way
        consumer.call_soon(cancel)

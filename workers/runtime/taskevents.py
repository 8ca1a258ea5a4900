"""Celery task events sent in batches from every pool: one ``PUBLISH`` per flush, not one per event.

Why. Workers send Celery task events (``task-received``, ``task-started``, ``task-succeeded`` ...) so
Flower can show jobs (``LLMQ_TASK_EVENTS``, on by default). Each was its own ``PUBLISH``: three
round trips per queued job, 7–10 % of the worker's profile. Batched (measured with 200 jobs, gevent,
bench/RESULTS-queue.md): their 600 events went out in 12–15 messages, Redis commands per job
21.0 → 18.2 (18.1 with events off), worker CPU per job −6 to −12 %. Celery can batch them:
:class:`celery.events.EventDispatcher` keeps the events of the groups in its ``buffer_group`` and
its ``flush()`` publishes each group's buffer as ONE message, routing key ``task.multi``, whose body
is the list of events; ``EventReceiver`` (and so Flower) unpacks it. Celery turns this on only for
workers with an event loop (``buffer_group=['task'] if c.hub``, celery/worker/consumer/events.py)
and then flushes at the loop's next turn: under ``-P gevent`` (no loop) every event was its own
``PUBLISH``, and under ``-P threads`` (a loop) the batches were mostly of one event.

What. :class:`TaskEventBatching`, a consumer bootstep after Celery's ``Events`` step (so it runs
again each time that step is restarted after a lost connection and makes a new dispatcher), sets
the dispatcher's ``buffer_group={'task'}`` and ``buffer_limit`` (:data:`BUFFER_LIMIT`: a full buffer
is published at once, by the job that filled it), drops the loop's flush-at-next-turn callback, and
runs a flusher that publishes what is buffered every ``LLMQ_TASK_EVENTS_FLUSH_MS`` (default 250;
0 leaves Celery's behaviour and does not install this step). The flusher is a
:class:`threading.Thread` started with the consumer, never at import: a real thread with the
threads pool, a greenlet under gevent's monkey-patching. Publishing stays under the dispatcher's
own lock, so the flusher, a job that fills the buffer and Celery's own flushes never interleave.

Delivery. Nothing buffered is dropped on a clean stop: the step flushes when the consumer stops
(a warm shutdown, before running jobs are waited for), again when it shuts down (after the pool
has finished them, before Celery's ``Events`` step closes the dispatcher: the ``task-succeeded`` of
a job that ended during the shutdown), and on a restart: there a publish that fails on the dead
connection goes to the dispatcher's offline buffer, which Celery hands to the next dispatcher and
publishes on reconnect, and events buffered after that flush are carried over by this step to the
new dispatcher. A killed worker loses at most one flush period of events (Flower then shows
those jobs as received or started), which is what a period is. With ``worker_send_task_events``
off the dispatcher drops task events before they reach any buffer: nothing is buffered or sent
(Flower's ``enable_events`` turns them on at run time, and then they are batched too). The events
are Celery's own, unchanged: ``task-received`` carries the short ``argsrepr`` the producer set
(``monitor_repr``: ids, model, sizes, no content).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from celery import bootsteps

from workers.runtime.state import LLMQCelery

__all__ = ["BUFFER_LIMIT", "GROUP", "TaskEventBatching"]

log = logging.getLogger("llmq.worker")

#: The event group batched: ``task-*`` events (``worker-*`` heartbeats stay one message each, at once).
GROUP = "task"
#: Events a buffer holds before the event that fills it publishes it (Celery's default is 24): one
#: message of ~64 events (~30 KB of JSON with the short ``argsrepr``) keeps a busy worker at a few
#: publishes per flush period.
BUFFER_LIMIT = 64


def flush_period_s(app: Any) -> float:
    """Seconds between flushes for ``app`` (its ``LLMQ_TASK_EVENTS_FLUSH_MS``); 0 for a foreign app."""
    if isinstance(app, LLMQCelery):
        return app.llmq.settings.task_events_flush_ms / 1000.0
    return 0.0


def batch(dispatcher: Any) -> None:
    """Make ``dispatcher`` (a :class:`celery.events.EventDispatcher`) keep task events for a flush."""
    dispatcher.buffer_group = frozenset({*dispatcher.buffer_group, GROUP})
    dispatcher.buffer_limit = BUFFER_LIMIT
    # the event loop's flush at its next turn (prefork, threads) would publish nearly every event alone
    dispatcher.on_send_buffered = None


def flush(dispatcher: Any) -> None:
    """Publish what ``dispatcher`` holds (each group as one ``<group>.multi`` message); never raises."""
    if dispatcher is None or not any(dispatcher._group_buffer.values()):
        return
    try:
        # groups only: re-sending the offline buffer is Celery's, on reconnect
        dispatcher.flush(errors=False, groups=True)
    except Exception:
        # with buffer_while_offline (Celery's default) a failed publish is kept, not raised
        log.warning("task events: flush failed", exc_info=True)


def carry_over(previous: Any, dispatcher: Any) -> None:
    """Move events still buffered in ``previous`` (closed by Celery's restarted ``Events`` step, which
    carries only its offline buffer over) to the front of ``dispatcher``'s buffers."""
    with previous.mutex:
        left = {group: list(events) for group, events in previous._group_buffer.items() if events}
        for events in previous._group_buffer.values():
            events.clear()
    if not left:
        return
    with dispatcher.mutex:  # a flush in progress deletes a prefix of the list it published
        for group, events in left.items():
            dispatcher._group_buffer[group][:0] = events


class _Flusher:
    """Calls ``tick`` every ``period_s`` until stopped, in a thread (a greenlet once gevent patched)."""

    def __init__(self, tick: Callable[[], None], period_s: float) -> None:
        self._tick = tick
        self._period_s = period_s
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="llmq-task-events", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stopping.wait(self._period_s):
            self._tick()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)


class TaskEventBatching(bootsteps.StartStopStep):
    """Consumer bootstep: task events buffered and flushed in batches (module docstring)."""

    label = "task event batching"
    requires = ("celery.worker.consumer.events:Events",)

    def __init__(self, c: Any, **kwargs: Any) -> None:
        super().__init__(c, **kwargs)
        self.period_s = flush_period_s(c.app)
        self._configured: Any = None  # the dispatcher this step set up last
        self._flusher: _Flusher | None = None

    def include_if(self, c: Any) -> bool:
        return self.period_s > 0

    def start(self, c: Any) -> None:
        dispatcher = c.event_dispatcher
        if dispatcher is not None and dispatcher is not self._configured:
            batch(dispatcher)
            previous, self._configured = self._configured, dispatcher
            if previous is not None:
                carry_over(previous, dispatcher)
        if self._flusher is None:
            self._flusher = _Flusher(lambda: flush(c.event_dispatcher), self.period_s)
            self._flusher.start()

    def stop(self, c: Any) -> None:
        # a warm shutdown (the pool still finishes its jobs: the flusher keeps running) or a restart
        flush(c.event_dispatcher)

    def terminate(self, c: Any) -> None:
        flush(c.event_dispatcher)

    def shutdown(self, c: Any) -> None:
        # after the pool finished its jobs, before Celery's Events step closes the dispatcher
        if self._flusher is not None:
            self._flusher.stop()
            self._flusher = None
        flush(c.event_dispatcher)

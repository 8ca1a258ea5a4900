"""Celery's ``task-sent`` events from a producer, sent in batches: one publish per flush, not per job.

Why. A producer sends a ``task-sent`` event with every job (``task_send_sent_event``), so Flower shows
jobs that wait in the queue. Celery publishes each at once, in a round trip of its own: measured, it
was 0.5–0.8 of the 1.35–1.8 ms a ``Client.submit`` took on a 2-core VM (2,000 submits, 3 rounds).
Workers already batch their task events (``workers/runtime/taskevents.py``); this is the same for
producers: the events are Celery's own, buffered in a :class:`celery.events.EventDispatcher`
(``buffer_group={'task'}``) and published as one ``task.multi`` message, whose body is the list of
events, which Flower's ``EventReceiver`` unpacks, at least every ``LLMQ_TASK_EVENTS_FLUSH_MS`` (250)
or when 64 are buffered. :meth:`SentEvents.close` (``Client.close``, ``with Client(...)``) publishes
what is left; a producer killed before that loses at most one period of ``task-sent`` events (Flower
then first sees those jobs when a worker receives them), never a job. So does a close while the broker
is unreachable: the events' connection tries it once per flush, without kombu's connection retries
(:data:`NO_RETRY`), so ``Client.close`` does not sit seconds in them.

How. Celery's ``send_task`` takes an ``event_dispatcher`` (what it calls ``publish`` on): this class
is one. It keeps a dispatcher of its own on its own broker connection, made on first use in each
process (a fork starts afresh; the parent's connection is left to the parent), and a flusher thread,
also started on first use, never at import.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

from celery import Celery

__all__ = ["BUFFER_LIMIT", "SentEvents"]

log = logging.getLogger("llmq.producer")

#: ``task-sent`` events buffered before the one that fills the buffer publishes them (as workers do).
BUFFER_LIMIT = 64
#: The events' own connection tries a broker once per flush, for at most this long (seconds): kombu's
#: default is to retry for ``broker_connection_timeout`` (4 s), which a flusher and then the close each
#: spent in full when Redis was gone: ``llmq submit`` sat ~10 s after its error line. Monitoring
#: events a flush cannot publish stay in the dispatcher's offline buffer for the next flush, and a
#: close that cannot publish them gives them up (Flower then first sees those jobs at a worker).
CONNECT_TIMEOUT_S = 1.0
#: Longest wait for a broker's reply on the events' connection (seconds): a broker that takes the
#: connection and never answers (hung, or not Redis) would otherwise hold a flush, and so
#: ``Client.close``, forever; a flush it cuts keeps its events for the next one.
REPLY_TIMEOUT_S = 5.0
#: The events' connection only (merged over the app's ``broker_transport_options``; jobs keep theirs):
#: no connection retries, and redis-py's own connect bounded too.
NO_RETRY: dict[str, Any] = {"max_retries": 0, "socket_connect_timeout": CONNECT_TIMEOUT_S}


class SentEvents:
    """The ``event_dispatcher`` a producer gives ``send_task``: ``task-sent`` events kept for a flush."""

    def __init__(
        self, app: Celery, *, period_s: float, limit: int = BUFFER_LIMIT, reply_timeout_s: float = REPLY_TIMEOUT_S
    ) -> None:
        if period_s <= 0:
            raise ValueError("period_s must be positive (0 means: let Celery publish each event)")
        self._app = app
        self._period_s = period_s
        self._limit = limit
        self._transport_options = {**NO_RETRY, "socket_timeout": reply_timeout_s}
        self._lock = threading.Lock()
        self._pid: int | None = None
        self._connection: Any = None
        self._dispatcher: Any = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False

    # what Celery's send_task_message calls
    def publish(
        self, type: str, fields: dict[str, Any], producer: Any, retry: bool = False, retry_policy: Any = None, **_: Any
    ) -> None:
        dispatcher = self._current()
        if dispatcher is None:  # closed: what Celery would have done
            self._app.events.Dispatcher(enabled=False).publish(
                type, fields, producer, retry=retry, retry_policy=retry_policy
            )
            return
        dispatcher.send(type, retry=retry, retry_policy=retry_policy, **fields)

    def buffered(self) -> int:
        """Events waiting for the next flush (in this process)."""
        dispatcher = self._mine()
        return sum(len(events) for events in dispatcher._group_buffer.values()) if dispatcher is not None else 0

    @property
    def closed(self) -> bool:
        """Closed (``Client.close``): a ``task-sent`` event is then published with its job's message by
        Celery's ``send_task``, the one path that still has a producer to publish it on."""
        return self._closed

    def would_publish(self) -> bool:
        """Whether the next :meth:`publish` in this process talks to the broker (it fills the buffer, or
        it is this process's first and makes the connection): an event loop publishes that one from a
        thread."""
        dispatcher = self._mine()
        return dispatcher is None or self.buffered() + 1 >= self._limit

    def flush(self) -> None:
        """Publish what is buffered (one ``task.multi`` message), and what an earlier publish that
        failed left in the dispatcher's offline buffer; never raises."""
        dispatcher = self._mine()
        if dispatcher is None or not (dispatcher._outbound_buffer or any(dispatcher._group_buffer.values())):
            return
        try:
            dispatcher.flush(errors=True, groups=True)
        except Exception:
            log.warning("task-sent events: flush failed", exc_info=True)

    def close(self) -> None:
        """Stop the flusher, publish what is left and close the connection."""
        with self._lock:
            self._closed = True
            thread, self._thread = self._thread, None
        self._stop.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)
        self.flush()
        with self._lock:
            dispatcher, connection = self._dispatcher, self._connection
            self._dispatcher = self._connection = None
            mine = self._pid == os.getpid()
        if mine and dispatcher is not None:
            try:
                dispatcher.close()
            finally:
                connection.release()

    def _mine(self) -> Any:
        """This process's dispatcher if it has made one (a forked child's parent's is not its own)."""
        return self._dispatcher if self._pid == os.getpid() else None

    def _current(self) -> Any:
        """This process's dispatcher (made, with its flusher, on first use); None once closed."""
        pid = os.getpid()
        dispatcher = self._dispatcher
        if dispatcher is not None and self._pid == pid:
            return dispatcher
        with self._lock:
            if self._closed:
                return None
            if self._dispatcher is None or self._pid != pid:
                connection = self._app.connection_for_write(
                    connect_timeout=CONNECT_TIMEOUT_S, transport_options=self._transport_options
                )
                dispatcher = self._app.events.Dispatcher(
                    connection, enabled=True, buffer_group=["task"], buffer_limit=self._limit
                )
                dispatcher.on_send_buffered = None  # flushed by the thread below, not after every event
                self._connection, self._dispatcher, self._pid = connection, dispatcher, pid
                self._stop = threading.Event()
                self._thread = threading.Thread(target=self._run, name="llmq-task-sent-events", daemon=True)
                self._thread.start()
            return self._dispatcher

    def _run(self) -> None:
        stop = self._stop
        while not stop.wait(self._period_s):
            self.flush()

"""A real Celery ``EventReceiver`` on the broker, in a thread: what Flower would see, message by message."""

from __future__ import annotations

import threading
import uuid
from types import TracebackType
from typing import Any

from celery import Celery
from celery.events import EventReceiver
from kombu import Connection

from tests.support.waits import until

__all__ = ["EventCapture"]

PROBE = "llmqtest-probe"


class _CountingReceiver(EventReceiver):
    """Celery's receiver, recording each message's events (a ``task.multi`` message carries a list)."""

    def __init__(self, *args: Any, on_message: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._on_message = on_message

    def _receive(self, body: Any, message: Any, *args: Any) -> None:
        self._on_message(body)
        super()._receive(body, message, *args)


class EventCapture:
    """Subscribes before the test's jobs run (checked with probe events) and records every message.

    ``messages``: per message, ``(batched, events)`` where ``batched`` says the body was a list."""

    def __init__(self, broker_url: str) -> None:
        self.broker_url = broker_url
        self._lock = threading.Lock()
        self._messages: list[tuple[bool, list[dict[str, Any]]]] = []
        self._app = Celery("llmq-test-events", broker=broker_url, set_as_current=False)
        self._conn = Connection(broker_url)
        self._receiver = _CountingReceiver(self._conn, handlers={}, app=self._app, on_message=self._record)
        self._thread = threading.Thread(target=self._run, name="event-capture", daemon=True)

    def _record(self, body: Any) -> None:
        batched = isinstance(body, list)
        events = [dict(e) for e in (body if batched else [body])]
        with self._lock:
            self._messages.append((batched, events))

    def _run(self) -> None:
        self._receiver.capture(wakeup=False)

    def __enter__(self) -> EventCapture:
        self._thread.start()
        self.sync()
        return self

    def sync(self) -> None:
        """Return once a probe event sent now has arrived: the receiver is subscribed, and whatever
        was published before this call (and answered) has arrived too (Redis keeps the order)."""
        probe_id = uuid.uuid4().hex
        with Connection(self.broker_url) as conn, self._app.events.Dispatcher(conn) as dispatcher:

            def probed() -> bool:
                dispatcher.send(PROBE, probe=probe_id)
                return any(e.get("probe") == probe_id for e in self.events())

            until(probed, "a probe event to arrive", guard_s=30, poll_s=0.1)

    def __exit__(self, *exc: object | TracebackType | None) -> None:
        self._receiver.should_stop = True
        self._thread.join(timeout=10)
        self._conn.release()
        self._app.close()

    # --- read-backs --------------------------------------------------------------------------------

    @property
    def messages(self) -> list[tuple[bool, list[dict[str, Any]]]]:
        with self._lock:
            return [(b, list(es)) for b, es in self._messages]

    def events(self) -> list[dict[str, Any]]:
        return [e for _, es in self.messages for e in es]

    def task_messages(self) -> list[tuple[bool, list[dict[str, Any]]]]:
        """Messages with the workers' task events (``task-sent`` comes from producers, in batches of its own)."""
        return [(b, es) for b, es in self.messages if any(_from_worker(e) for e in es)]

    def task_events(self, job_ids: set[str] | None = None) -> dict[str, list[str]]:
        """Per task id (= job id), the types of the workers' task events for it, in the order received."""
        seen: dict[str, list[str]] = {}
        for e in self.events():
            if _from_worker(e) and (job_ids is None or e.get("uuid") in job_ids):
                seen.setdefault(e["uuid"], []).append(e["type"])
        return seen


def _from_worker(event: dict[str, Any]) -> bool:
    return str(event.get("type", "")).startswith("task-") and event["type"] != "task-sent"

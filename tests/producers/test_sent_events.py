"""A producer's ``task-sent`` events (Flower's view of queued jobs) in batches (producers/sentevents.py).

Real parts: the tests' Redis as broker, Celery's own ``EventReceiver`` subscribed to it
(tests/support/taskevents.py), no worker (the jobs stay queued). Publishing is driven by the client's
close, the buffer limit or the flusher; the tests wait for counts, never for durations.
"""

from __future__ import annotations

import json
import socket
import threading
from typing import Any

from producers import Client
from producers.core import make_celery
from producers.sentevents import BUFFER_LIMIT, SentEvents
from producers.settings import ProducerSettings
from tests.support.taskevents import EventCapture
from tests.support.tcplistener import TCPListener
from tests.support.waits import until
from workers.contract import DEFAULT_QUEUE

SECRET_TEXT = "my medical history is"


def _client(redis_url: str, **settings: Any) -> Client:
    return Client(settings=ProducerSettings(redis_url=redis_url, **settings))


def _client_without_flusher(redis_url: str) -> Client:
    """A client whose events leave only when its buffer fills or it closes (the flusher waits an hour)."""
    client = _client(redis_url)
    client.sent_events = SentEvents(client.celery, period_s=3600)
    return client


def _submit(client: Client, n: int) -> list[str]:
    job = {"model": "openai:gpt-4o-mini", "messages": [{"role": "user", "content": f"{SECRET_TEXT} ..."}]}
    return [client.submit(job).id for _ in range(n)]


def _sent(capture: EventCapture) -> list[tuple[bool, list[dict[str, Any]]]]:
    return [(b, es) for b, es in capture.messages if any(e.get("type") == "task-sent" for e in es)]


def test_task_sent_events_leave_in_one_message_at_close(redis_url: str) -> None:
    with EventCapture(redis_url) as capture:
        client = _client_without_flusher(redis_url)
        ids = _submit(client, 5)
        capture.sync()  # everything published so far has arrived: nothing yet
        assert _sent(capture) == []
        assert client.sent_events is not None and client.sent_events.buffered() == 5
        client.close()
        capture.sync()
        messages = _sent(capture)
        assert [batched for batched, _ in messages] == [True]  # one task.multi message
        events = messages[0][1]
        assert [e["uuid"] for e in events] == ids  # in submit order
        assert {e["type"] for e in events} == {"task-sent"} and {e["queue"] for e in events} == {DEFAULT_QUEUE}
        for event in events:  # Celery's own fields, with the short argsrepr (no content)
            assert event["name"] == "llmq.run_job" and json.loads(event["args"][1:-2])["id"] == event["uuid"]
        assert SECRET_TEXT not in json.dumps(events)


def test_a_full_buffer_is_published_by_the_submit_that_fills_it(redis_url: str) -> None:
    with EventCapture(redis_url) as capture:
        client = _client_without_flusher(redis_url)
        try:
            ids = _submit(client, BUFFER_LIMIT + 3)
            capture.sync()
            messages = _sent(capture)
            assert [len(es) for _, es in messages] == [BUFFER_LIMIT]
            assert [e["uuid"] for e in messages[0][1]] == ids[:BUFFER_LIMIT]
        finally:
            client.close()
        capture.sync()
        assert [len(es) for _, es in _sent(capture)] == [BUFFER_LIMIT, 3]


def test_the_flusher_publishes_without_being_asked(redis_url: str) -> None:
    with EventCapture(redis_url) as capture:
        client = _client(redis_url, task_events_flush_ms=20)
        try:
            ids = _submit(client, 3)
            until(
                lambda: [e["uuid"] for _, es in _sent(capture) for e in es] == ids,
                "the flusher published the task-sent events",
                guard_s=30,
            )
            assert all(batched for batched, _ in _sent(capture))
        finally:
            client.close()


def test_unbatched_each_job_sends_its_own_event(redis_url: str) -> None:
    with EventCapture(redis_url) as capture, _client(redis_url, task_events_flush_ms=0) as client:
        assert client.sent_events is None
        ids = _submit(client, 3)
        capture.sync()
        messages = _sent(capture)
        assert [(batched, [e["uuid"] for e in es]) for batched, es in messages] == [(False, [i]) for i in ids]


def test_no_task_sent_events_when_task_events_are_off(redis_url: str) -> None:
    with EventCapture(redis_url) as capture:
        with _client(redis_url, task_events=False) as client:
            assert client.sent_events is None
            _submit(client, 3)
        capture.sync()
        assert _sent(capture) == []


class HangUpListener(TCPListener):
    """A real TCP listener that takes each connection and closes it at once (a Redis that is gone,
    as kombu and redis-py see it: the connect succeeds, the first read fails); counts the connections."""

    def __init__(self) -> None:
        super().__init__()
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def serve(self, conn: socket.socket) -> None:
        conn.close()


def test_close_tries_an_unreachable_broker_once_and_gives_the_events_up(redis_url: str) -> None:
    """The events are Flower's, not the jobs': a close that cannot publish them does not retry
    (kombu would, for seconds, and ``llmq submit`` would sit there after its error line)."""
    with HangUpListener() as gone:
        client = _client(redis_url)
        client.sent_events = SentEvents(make_celery(gone.url, client.queue), period_s=3600)
        ids = _submit(client, 3)  # the jobs go to the real Redis, their events wait for the close
        assert client.sent_events.buffered() == 3 and gone.connections == 0
        client.close()
        assert gone.connections == 1
        assert client.redis.exists(*[f"llmq:job:{{{i}}}:meta" for i in ids]) == 3  # the jobs are queued


class SilentListener(HangUpListener):
    """A real TCP listener that takes each connection, reads what it is sent and never answers (a hung
    Redis, or something that is not Redis)."""

    def serve(self, conn: socket.socket) -> None:
        with conn:
            while True:
                try:
                    if not conn.recv(65536):
                        return
                except OSError:
                    return


def test_close_gives_up_on_a_broker_that_never_answers(redis_url: str) -> None:
    """A broker that takes the connection and never answers holds a close only up to the reply
    timeout; the jobs are queued (in the real Redis) all the same."""
    with SilentListener() as silent:
        client = _client(redis_url)
        client.sent_events = SentEvents(make_celery(silent.url, client.queue), period_s=3600, reply_timeout_s=0.2)
        ids = _submit(client, 2)
        closing = threading.Thread(target=client.close, daemon=True)
        closing.start()
        closing.join(60)  # a hang guard, not a timing check: without a reply timeout it never returns
        assert not closing.is_alive() and silent.connections >= 1
        assert client.redis.exists(*[f"llmq:job:{{{i}}}:meta" for i in ids]) == 2

"""Celery task events (Flower's feed) arrive in order, in batches, and survive a stop and a reconnect.

Real parts only: a Redis of the tests' own, an in-process worker (threads pool) or a ``celery worker
-P gevent`` subprocess running jobs against the simulator, and Celery's own ``EventReceiver``
subscribed to the same broker (tests/support/taskevents.py). See workers/runtime/taskevents.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
import redis
from celery.contrib.testing.worker import start_worker
from pydantic import ValidationError

from llmq.devstack import LocalStack
from producers import Client
from simulator.app import SimulatorThread
from simulator.env import provider_env
from tests.support.taskevents import EventCapture
from tests.support.waits import until
from workers.runtime.app import close_runner, create_app
from workers.runtime.taskevents import BUFFER_LIMIT, TaskEventBatching
from workers.settings import Settings, get_settings

RUN = ["task-received", "task-started", "task-succeeded"]
SECRET_TEXT = "my medical history is"


@contextlib.contextmanager
def _worker(redis_url: str, simulator: SimulatorThread, **overrides: Any) -> Iterator[Any]:
    settings = Settings(
        redis_url=redis_url, pool="threads", concurrency=8, coalesce_ms=20.0, claim_lease_s=10, **overrides
    )
    app = create_app(settings, provider_env=provider_env(simulator.url))
    try:
        with start_worker(
            app, pool="threads", concurrency=8, perform_ping_check=False, shutdown_timeout=10, without_heartbeat=True
        ) as w:
            yield w
    finally:
        close_runner(app)


def _run_jobs(client: Client, n: int, tag: str) -> list[str]:
    handles = [
        client.submit(
            {
                "model": "openai:gpt-4o-mini",
                "stream": False,
                "messages": [{"role": "user", "content": f"{SECRET_TEXT} {tag}{i}"}],
            }
        )
        for i in range(n)
    ]
    for handle in handles:
        assert handle.result(timeout=60).status == "succeeded"
    return [h.id for h in handles]


def _wait_succeeded(capture: EventCapture, ids: list[str]) -> None:
    wanted = set(ids)
    try:
        until(
            lambda: sum("task-succeeded" in types for types in capture.task_events(wanted).values()) == len(wanted),
            f"task-succeeded of {len(wanted)} jobs",
            guard_s=60,
        )
    except AssertionError as exc:
        raise AssertionError(f"{exc}; received: {capture.task_events(wanted)}") from None


def _assert_runs_in_batches(capture: EventCapture, ids: list[str]) -> None:
    """Each job: received, started, succeeded, once each and in that order; all of them in batches."""
    seen = capture.task_events(set(ids))
    assert {job: seen.get(job) for job in ids} == {job: RUN for job in ids}
    messages = capture.task_messages()
    events = sum(len(es) for _, es in messages)
    assert all(batched for batched, _ in messages)  # every one a task.multi list
    assert all(len(es) <= BUFFER_LIMIT for _, es in messages)
    assert len(messages) < events, (len(messages), events)


def test_task_events_arrive_in_order_in_batches_with_a_short_argsrepr(
    redis_url: str, simulator: SimulatorThread, client: Client
) -> None:
    with EventCapture(redis_url) as capture, _worker(redis_url, simulator) as w:
        dispatcher = w.consumer.event_dispatcher  # set up by the step (Celery's own: limit 24, flush per loop turn)
        assert "task" in dispatcher.buffer_group and dispatcher.buffer_limit == BUFFER_LIMIT
        assert dispatcher.on_send_buffered is None
        ids = _run_jobs(client, 12, "a")
        _wait_succeeded(capture, ids)
        _assert_runs_in_batches(capture, ids)
        received = [e for e in capture.events() if e["type"] == "task-received"]
        assert len(received) == 12
        for event in received:  # the producer's short argsrepr (monitor_repr), which Celery sends as "args"
            assert event["args"].startswith("(") and len(event["args"]) < 400
            assert json.loads(event["args"][1:-2])["id"] == event["uuid"]
        assert SECRET_TEXT not in json.dumps(capture.events())


def test_a_stop_right_after_the_jobs_still_delivers_their_task_succeeded(
    redis_url: str, simulator: SimulatorThread, client: Client
) -> None:
    # the longest period: what arrives was flushed by the stop, not by the period
    with EventCapture(redis_url) as capture:
        with _worker(redis_url, simulator, task_events_flush_ms=5000):
            ids = _run_jobs(client, 10, "b")
        _wait_succeeded(capture, ids)
        _assert_runs_in_batches(capture, ids)


def test_no_task_events_when_they_are_off(redis_url: str, simulator: SimulatorThread, client: Client) -> None:
    with EventCapture(redis_url) as capture:
        with _worker(redis_url, simulator, task_events=False) as w:
            ids = _run_jobs(client, 6, "c")
            dispatcher = w.consumer.event_dispatcher
            assert dispatcher is None or not any(dispatcher._group_buffer.values())  # nothing buffered
        capture.sync()  # whatever the worker published before it stopped has arrived
        assert capture.task_events() == {}
        assert len(ids) == 6


def _kill_consumer_connections(r: redis.Redis) -> int:
    """Close the worker consumer's blocking fetch connection(s) (``BLMOVE``), as a network cut would."""
    killed = 0
    for info in r.client_list():
        if info.get("cmd") in ("blmove", "blpop"):
            with contextlib.suppress(redis.ResponseError):
                killed += int(r.client_kill_filter(_id=info["id"]))
    return killed


def test_batching_survives_the_events_step_restarting_after_a_connection_loss(
    redis_url: str, redis_client: redis.Redis, simulator: SimulatorThread, client: Client
) -> None:
    with EventCapture(redis_url) as capture, _worker(redis_url, simulator) as w:
        before = _run_jobs(client, 6, "d")
        _wait_succeeded(capture, before)
        old = w.consumer.event_dispatcher

        def reconnected() -> bool:
            _kill_consumer_connections(redis_client)
            new = w.consumer.event_dispatcher
            return new is not None and new is not old and new.enabled

        until(reconnected, "the consumer to reconnect with a new event dispatcher", guard_s=60, poll_s=0.2)
        new = w.consumer.event_dispatcher
        assert "task" in new.buffer_group and new.buffer_limit == BUFFER_LIMIT and new.on_send_buffered is None
        after = _run_jobs(client, 6, "e")
        _wait_succeeded(capture, after)
        _assert_runs_in_batches(capture, before + after)


@pytest.mark.slow
def test_a_gevent_worker_sends_task_events_in_batches_and_flushes_them_on_a_warm_shutdown(
    redis_server_url: str,
) -> None:
    url = redis_server_url.replace("/0", "/4")
    redis.Redis.from_url(url).flushdb()
    env = {**os.environ, "LLMQ_REDIS_URL": url}
    with LocalStack(env=env) as stack, EventCapture(url) as capture:
        stack.start_redis()
        stack.start_simulator()
        proc = stack.start_worker(
            pool="gevent", concurrency=20, name="events1", extra_env={"LLMQ_TASK_EVENTS_FLUSH_MS": "2000"}
        )
        stack.wait_for_workers(1)
        with Client(url) as client:
            first = _run_jobs(client, 12, "f")
            _wait_succeeded(capture, first)  # flushed by the period (the flusher is a greenlet)
            second = _run_jobs(client, 12, "g")
        # right after the jobs, within the period: a warm shutdown (Ctrl-C; `llmq worker` maps SIGTERM to a
        # cold one, which may cancel a job between its stored result and Celery's end of it)
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=60)  # (Celery exits 1 after Ctrl-C)
        _wait_succeeded(capture, second)
        _assert_runs_in_batches(capture, first + second)


@pytest.mark.slow
def test_llmq_worker_with_task_events_off_sends_none(redis_server_url: str) -> None:
    # `llmq worker` once passed -E, which overrode LLMQ_TASK_EVENTS=0
    url = redis_server_url.replace("/0", "/5")
    redis.Redis.from_url(url).flushdb()
    env = {**os.environ, "LLMQ_REDIS_URL": url}
    with LocalStack(env=env) as stack, EventCapture(url) as capture:
        stack.start_redis()
        stack.start_simulator()
        proc = stack.start_worker(pool="gevent", concurrency=20, name="events0", extra_env={"LLMQ_TASK_EVENTS": "0"})
        stack.wait_for_workers(1)
        with Client(url) as client:
            ids = _run_jobs(client, 6, "h")
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=60)
        capture.sync()  # whatever the worker published before it stopped has arrived
        assert capture.task_events() == {}
        assert len(ids) == 6


def test_the_flush_period_setting_is_validated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMQ_TASK_EVENTS_FLUSH_MS", "100")
    assert get_settings().task_events_flush_ms == 100
    assert Settings().task_events_flush_ms == 100
    monkeypatch.delenv("LLMQ_TASK_EVENTS_FLUSH_MS")
    assert Settings().task_events_flush_ms == 250
    for bad in (-1, 5001):
        with pytest.raises(ValidationError):
            Settings(task_events_flush_ms=bad)
    # 0: Celery's own behaviour, the step is left out
    for ms, included in ((0, False), (1, True)):
        app = create_app(Settings(task_events_flush_ms=ms))
        assert TaskEventBatching(SimpleNamespace(app=app)).include_if(None) is included

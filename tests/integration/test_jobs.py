"""Jobs end to end: producer -> real Redis -> in-process Celery worker -> simulator -> subscriber.

Tests marked ``BOTH_BROKERS`` run twice: with the job queue in Redis and in a RabbitMQ quorum queue
(``LLMQ_BROKER_URL``; results and events stay in Redis either way)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest
from celery.contrib.testing.worker import start_worker
from celery.worker import state as worker_state

from producers import Client, InvalidJobError
from producers.client import make_celery
from simulator.app import SimulatorThread
from simulator.env import provider_env
from tests.support.brokers import Broker, amqp_worker, deliver_again, queued_count
from tests.support.spend import global_spent_usd
from tests.support.waits import until
from workers.contract import TASK_NAME, JobKeys
from workers.runtime.app import close_runner, create_app
from workers.settings import Settings

BOTH_BROKERS = pytest.mark.parametrize("broker", ["redis", "amqp"], indirect=True)


def _job(model: str = "openai:gpt-4o-mini", **extra: object) -> dict[str, object]:
    return {"model": model, "messages": [{"role": "user", "content": "hello there"}], **extra}


def _requests_for(sim: SimulatorThread, job_id: str) -> int:
    return int(sim.simulator.stats.by_job.get(job_id, 0))


def _assert_well_formed(events: list) -> None:
    seqs = [e.seq for e in events]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs), seqs
    terminal = [e for e in events if e.type in ("done", "error", "cancelled")]
    assert len(terminal) == 1 and events[-1] is terminal[0]


@BOTH_BROKERS
@pytest.mark.parametrize("stream", [True, False])
def test_job_completes_through_the_queue(worker, client: Client, simulator: SimulatorThread, stream: bool) -> None:
    handle = client.submit(_job(stream=stream))
    events = list(handle.stream(timeout=30))
    _assert_well_formed(events)
    assert next(e.type for e in events) == "start"
    result = handle.result(timeout=5)
    assert result.status == "succeeded"
    assert result.model_used == "openai:gpt-4o-mini"
    assert result.usage.completion_tokens == 20 and not result.usage.estimated
    assert result.content.split() and len(result.content.split()) == 20
    deltas = "".join(e.text for e in events if e.type == "delta")
    assert deltas == (result.content if stream else "")
    assert events[-1].type == "done" and events[-1].result.content == result.content
    assert _requests_for(simulator, handle.id) == 1


def test_late_subscriber_gets_every_delta(worker, client: Client, simulator: SimulatorThread) -> None:
    simulator.simulator.config.tokens_per_s = 200  # ~0.1 s of streaming
    handle = client.submit(_job())
    result = handle.result(timeout=30)
    # joins after the job finished: everything is replayed from the job's Stream
    replayed = list(client.stream(handle.id, timeout=5))
    _assert_well_formed(replayed)
    assert "".join(e.text for e in replayed if e.type == "delta") == result.content
    # resuming from the middle returns exactly the tail
    middle = replayed[len(replayed) // 2].seq
    tail = list(client.stream(handle.id, from_seq=middle, timeout=5))
    assert [e.seq for e in tail] == [e.seq for e in replayed if e.seq >= middle]


def test_subscriber_joining_mid_stream_misses_nothing(worker, client: Client, simulator: SimulatorThread) -> None:
    simulator.simulator.config.tokens_per_s = 40  # ~0.5 s
    handle = client.submit(_job())
    seen_first = threading.Event()
    early: list = []

    def follow() -> None:
        for event in client.stream(handle.id, timeout=30):
            early.append(event)
            if event.type == "delta":
                seen_first.set()

    t = threading.Thread(target=follow)
    t.start()
    assert seen_first.wait(20)
    late = list(client.stream(handle.id, timeout=30))  # joins while deltas are flowing
    t.join(30)
    _assert_well_formed(late)
    assert [e.model_dump() for e in late] == [e.model_dump() for e in early]


def test_same_id_twice_runs_once(worker, client: Client, simulator: SimulatorThread) -> None:
    first = client.submit(_job(id="order-42"))
    second = client.submit(_job(id="order-42"))
    assert first.enqueued and not second.enqueued
    assert first.result(timeout=30).status == "succeeded"
    time.sleep(0.3)  # give a (wrongly) duplicated message time to be picked up
    assert _requests_for(simulator, "order-42") == 1


def test_a_finished_job_delivered_again_stops_at_its_stored_result(
    worker, client: Client, simulator: SimulatorThread, redis_url: str, redis_client
) -> None:
    # what a restore sends when a worker died after a job ended and before its ack left (a batched
    # ack, LLMQ_ACK_FLUSH_MS, or an ack lost with Redis): the same job's message once more
    handle = client.submit(_job(id="order-77"))
    assert handle.result(timeout=30).status == "succeeded"
    spent = global_spent_usd(redis_url)
    events = list(handle.stream(timeout=5))
    ran = worker_state.total_count[TASK_NAME]  # tasks this process's (in-process) worker ended
    deliver_again(client, redis_client, client.stamped(_job(id="order-77")))
    # the task ran and ended; its message was queued, then held (never neither), then acked and gone
    until(
        lambda: (
            worker_state.total_count[TASK_NAME] >= ran + 1  # (the first run may be counted late)
            and queued_count(redis_client, "llmq") == 0
            and redis_client.hlen("unacked") == 0
        ),
        "the second delivery was taken, ended and acked",
        30,
    )
    assert _requests_for(simulator, "order-77") == 1  # no second call
    assert global_spent_usd(redis_url) == spent  # no second charge
    again = list(handle.stream(timeout=5))
    assert [(e.seq, e.type) for e in again] == [(e.seq, e.type) for e in events]  # no second ending
    _assert_well_formed(again)


@pytest.mark.parametrize(
    ("job", "problem"),
    [
        ({"model": "openai:gpt-4o", "messages": [{"role": "wizard", "content": "hi"}]}, "role"),
        ({"model": "openai:gpt-4o", "messages": []}, "messages"),
        ({"model": "openai:gpt-4o", "messages": [{"role": "user", "content": "hi"}], "colour": "red"}, "colour"),
        ({"model": "openai:gpt-4o", "messages": [{"role": "user", "content": "hi"}], "max_tokens": -5}, "max_tokens"),
        ({"model": "gpt 4o", "messages": [{"role": "user", "content": "hi"}]}, "model"),
        (
            {"model": "openai:gpt-4o", "messages": [{"role": "user", "content": "x"}], "metadata": {"api_key": "sk"}},
            "credential",
        ),
    ],
)
def test_invalid_job_is_rejected_by_the_producer(client: Client, redis_client, job, problem: str) -> None:
    with pytest.raises(InvalidJobError) as info:
        client.submit(job)
    assert problem in str(info.value)
    assert queued_count(redis_client, "llmq") == 0
    assert not redis_client.keys("llmq:job:*")


def test_unknown_provider_fails_on_the_worker_without_hanging(worker, client: Client, broker: Broker) -> None:
    # the producer refuses it before enqueueing, knowing what the live workers accept...
    with pytest.raises(InvalidJobError, match="unknown provider 'nosuch'"):
        client.submit(_job("nosuch:model-1"))
    # ...and one sent around that check (another language, an old version) still ends on the worker
    app = make_celery(broker.url, broker.queue)
    app.send_task(
        TASK_NAME, args=[{**_job("nosuch:model-1"), "id": "nosuch-1"}], task_id="nosuch-1", queue=broker.queue
    )
    app.close()
    handle = client.stream("nosuch-1", timeout=30)
    events = list(handle)
    _assert_well_formed(events)
    assert events[-1].type == "error"
    assert events[-1].error.type == "configuration_error"
    assert "unknown provider 'nosuch'" in events[-1].error.message
    result = client.result("nosuch-1", timeout=5)
    assert result.status == "failed" and result.error is not None and not result.error.retryable


@BOTH_BROKERS
def test_invalid_payload_reaching_the_worker_still_ends(worker, client: Client, broker: Broker) -> None:
    # a producer that bypasses validation (another language, an old version) still gets an answer
    app = make_celery(broker.url, broker.queue)
    app.send_task("llmq.run_job", args=[{"id": "bad-1", "model": "openai:x", "messages": "nope"}], queue=broker.queue)
    app.close()
    result = client.result("bad-1", timeout=30)
    assert result.status == "failed" and result.error.type == "bad_request"
    assert "invalid job payload" in result.error.message


@pytest.mark.parametrize(
    "bad",
    [
        {"messages": [{"role": "user", "content": "hi \ud800 there"}]},
        {"messages": [{"role": "user", "content": "hi"}], "metadata": {"k": "\udfff"}},
        {"messages": [{"role": "user", "content": [{"type": "text", "text": "\ud83d"}]}]},
    ],
)
def test_text_that_is_not_unicode_is_refused_at_submit_and_still_ends_on_the_worker(
    bad: dict[str, object], worker, client: Client, redis_url: str
) -> None:
    # A lone surrogate is legal in JSON and in a Python str, but no result or event holding it
    # could be serialized: the producer refuses it, naming the field ...
    job = {"id": "surrogate-1", "model": "openai:gpt-4o-mini"} | bad
    with pytest.raises(InvalidJobError, match="not valid Unicode"):
        client.submit(job)
    # ... and a payload sent past the producer still ends with a failed result and an error event.
    from producers.client import make_celery

    app = make_celery(redis_url)
    app.send_task("llmq.run_job", args=[job], queue="llmq")
    app.close()
    result = client.result("surrogate-1", timeout=30)
    assert result.status == "failed" and result.error is not None and result.error.type == "bad_request"
    assert "not valid Unicode" in result.error.message
    events = list(client.stream("surrogate-1", timeout=30))
    assert [e.type for e in events][-1] == "error"


def test_cancel_mid_stream_aborts_the_upstream_read(worker, client: Client, simulator: SimulatorThread) -> None:
    simulator.simulator.config.tokens_per_s = 5  # 4 s of streaming unless cancelled
    handle = client.submit(_job())
    for event in handle.stream(timeout=30):
        if event.type == "delta":
            break
    assert handle.cancel()
    events = list(client.stream(handle.id, timeout=30))
    assert events[-1].type == "cancelled"
    result = handle.result(timeout=5)
    assert result.status == "cancelled"
    until(lambda: simulator.simulator.stats.closed_early >= 1, "the simulator to see the stream closed early", 30)


def test_cancel_aborts_a_whole_body_call_in_flight(worker, client: Client, simulator: SimulatorThread) -> None:
    """``stream: false``: no stream to close, yet a cancel ends the blocked call at once (the
    upstream would answer 20 s later) and starts no retry or fallback."""
    handle = client.submit(
        {
            "model": "openai:gpt-4o-mini~stall@20",
            "fallbacks": ["openai:gpt-4o"],
            "stream": False,
            "messages": [{"role": "user", "content": "long answer"}],
        }
    )
    until(lambda: simulator.simulator.stats.requests >= 1, "the call to reach the simulator", 60, 0.02)
    assert handle.cancel()
    result = handle.result(timeout=10)  # the upstream would answer only after 20 s
    assert result.status == "cancelled"
    assert simulator.simulator.stats.requests == 1
    assert [(a.model, a.error_type) for a in result.attempts] == [("openai:gpt-4o-mini~stall@20", "cancelled")]


def test_templates_render_into_messages(worker, client: Client) -> None:
    handle = client.submit({"model": "openai:gpt-4o-mini", "template": "Summarize {text}", "variables": {"text": "x"}})
    assert handle.result(timeout=30).status == "succeeded"
    with pytest.raises(InvalidJobError, match="without a value: text"):
        client.submit({"model": "openai:gpt-4o-mini", "template": "Summarize {text}"})


def test_stats_endpoint_counts_requests(simulator: SimulatorThread) -> None:
    stats = httpx2.get(f"{simulator.url}/_sim/stats").json()
    assert stats["requests"] == 0


def test_job_keys_expire(worker, client: Client, redis_client) -> None:
    handle = client.submit(_job())
    handle.result(timeout=30)
    keys = JobKeys(handle.id)
    for key in (keys.result, keys.events, keys.meta):
        assert 0 < redis_client.ttl(key) <= 86_400


def test_a_registration_whose_send_was_lost_is_sent_again(worker, client: Client, redis_client) -> None:
    # a producer died between registering the id and sending the message
    keys = JobKeys("lost-send-1")
    redis_client.hset(keys.meta, mapping={"state": "queued", "tenant": "default", "submitted_at": time.time() - 120})
    handle = client.submit(_job(id="lost-send-1"))
    assert handle.enqueued
    assert handle.result(timeout=30).status == "succeeded"
    assert not client.submit(_job(id="lost-send-1")).enqueued  # sent now: never again


@pytest.fixture
def requeue_worker(worker_settings: Settings, simulator: SimulatorThread, tmp_path: Path) -> Iterator[object]:
    """A worker that re-queues any wait over 0.2 s (a 429 with retry-after 1 s re-queues the job)."""
    config = tmp_path / "llmq.toml"
    config.write_text("max_inworker_wait_s = 0.2\nmax_requeues = 3\n")
    settings = worker_settings.model_copy(update={"config": str(config), "concurrency": 4})
    app = create_app(settings, provider_env=provider_env(simulator.url))
    try:
        with start_worker(
            app, pool="threads", concurrency=4, perform_ping_check=False, shutdown_timeout=10,
            without_heartbeat=not amqp_worker(settings),
        ) as w:  # fmt: skip
            yield w
    finally:
        close_runner(app)


@BOTH_BROKERS
def test_a_rate_limited_job_is_requeued_with_a_countdown_and_then_succeeds(
    requeue_worker: object, client: Client, redis_client, simulator: SimulatorThread
) -> None:
    # on RabbitMQ the countdown travels through Celery's native delayed delivery (quorum queues hold no ETA)
    handle = client.submit(_job("openai:gpt-4o~429@1"))  # first request: 429 retry-after 1 s; then ok
    events = list(handle.stream(timeout=60))
    result = handle.result(timeout=10)
    assert result.status == "succeeded", result.error
    assert [a.error_type for a in result.attempts] == ["rate_limited", None]
    assert redis_client.hget(JobKeys(handle.id).meta, "requeues") == b"1"  # re-queued once, not slept
    assert _requests_for(simulator, handle.id) == 2
    assert [e.type for e in events].count("done") == 1 and events[-1].type == "done"
    _assert_well_formed(events)

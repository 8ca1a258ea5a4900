"""Retries and fallback through the real queue, with faults injected by the simulator."""

from __future__ import annotations

import pytest
import redis
from celery.contrib.testing.worker import start_worker

from producers import Client
from simulator.app import SimulatorThread
from simulator.env import provider_env
from workers.contract import JobKeys
from workers.runtime.app import close_runner, create_app
from workers.settings import Settings


def _run(client: Client, model: str, *, fallbacks: tuple[str, ...] = (), stream: bool = True):
    handle = client.submit(
        {
            "model": model,
            "fallbacks": list(fallbacks),
            "stream": stream,
            "messages": [{"role": "user", "content": "resilience"}],
        }
    )
    events = list(handle.stream(timeout=60))
    return handle, events, handle.result(timeout=5)


def _requests(sim: SimulatorThread, job_id: str) -> int:
    return int(sim.simulator.stats.by_job.get(job_id, 0))


def test_429_waits_what_retry_after_says(worker, client: Client, simulator: SimulatorThread) -> None:
    handle, _, result = _run(client, "openai:gpt-4o~429@2")
    assert result.status == "succeeded"
    assert _requests(simulator, handle.id) == 2
    first, second = result.attempts
    assert (first.status, first.error_type, first.http_status, first.wait_s) == ("failed", "rate_limited", 429, 2.0)
    assert second.status == "succeeded"


@pytest.mark.parametrize(("fault", "error_type"), [("400", "bad_request"), ("401", "authentication_error")])
def test_non_retryable_errors_make_exactly_one_request(
    worker, client: Client, simulator: SimulatorThread, fault: str, error_type: str
) -> None:
    handle, events, result = _run(client, f"openai:gpt-4o~{fault}*", fallbacks=("openai:gpt-4o-mini",))
    assert result.status == "failed" and result.error.type == error_type and not result.error.retryable
    assert _requests(simulator, handle.id) == 1  # no retry, and no fallback either: it would fail the same way
    assert events[-1].type == "error"


def test_insufficient_quota_is_not_retried_but_falls_back(worker, client: Client, simulator: SimulatorThread) -> None:
    handle, _, result = _run(client, "openai:gpt-4o~quota*", fallbacks=("openai:gpt-4o-mini",))
    assert result.status == "succeeded" and result.model_used == "openai:gpt-4o-mini"
    assert simulator.simulator.stats.by_model["gpt-4o~quota*"] == 1
    assert [(a.model, a.error_type) for a in result.attempts] == [
        ("openai:gpt-4o~quota*", "insufficient_quota"),
        ("openai:gpt-4o-mini", None),
    ]
    # without a fallback: one request, a typed failure
    handle, _, result = _run(client, "openai:gpt-4o~quota*")
    assert result.status == "failed" and result.error.type == "insufficient_quota"
    assert _requests(simulator, handle.id) == 1


def test_503_twice_then_success(worker, client: Client, simulator: SimulatorThread) -> None:
    handle, _, result = _run(client, "openai:gpt-4o~503,503")
    assert result.status == "succeeded"
    assert _requests(simulator, handle.id) == 3
    assert [a.error_type for a in result.attempts] == ["server_error", "server_error", None]


def test_primary_always_503_falls_back(worker, client: Client, simulator: SimulatorThread) -> None:
    _handle, _, result = _run(client, "openai:gpt-4o~503*", fallbacks=("openai:gpt-4o-mini",))
    assert result.status == "succeeded" and result.model_used == "openai:gpt-4o-mini"
    assert simulator.simulator.stats.by_model["gpt-4o~503*"] == 4  # 1 + 3 retries


def test_every_model_failing_names_each_attempt(worker, client: Client, simulator: SimulatorThread) -> None:
    _, events, result = _run(client, "openai:gpt-4o~503*", fallbacks=("openai:gpt-4o-mini~529*",), stream=False)
    assert result.status == "failed" and result.error.type == "all_models_failed"
    assert "openai:gpt-4o~503*: server_error" in result.error.message
    assert "openai:gpt-4o-mini~529*: overloaded" in result.error.message
    assert len(result.attempts) == 8
    assert events[-1].type == "error"


@pytest.mark.parametrize("fault", ["midstream", "cut", "malformed"])
def test_failure_after_first_delta_is_terminal(worker, client: Client, simulator: SimulatorThread, fault: str) -> None:
    handle, events, result = _run(client, f"openai:gpt-4o~{fault}*", fallbacks=("openai:gpt-4o-mini",))
    assert result.status == "failed" and result.error.type == "mid_stream_error"
    assert events[-1].type == "error"
    assert _requests(simulator, handle.id) == 1  # no retry, no fallback
    text = "".join(e.text for e in events if e.type == "delta")
    assert text and result.content == text  # the partial text, once, never repeated
    assert simulator.simulator.stats.by_model.get("gpt-4o-mini", 0) == 0


def test_a_429_with_a_long_retry_after_falls_back_at_once(
    worker, client: Client, simulator: SimulatorThread, redis_url: str
) -> None:
    """retry-after 30 s is over the in-worker cap (10 s): the fallback serves the job in this run."""
    handle, events, result = _run(client, "openai:gpt-4o~429@30*", fallbacks=("openai:gpt-4o-mini",))
    assert result.status == "succeeded" and result.model_used == "openai:gpt-4o-mini"
    assert [(a.model, a.error_type, a.wait_s) for a in result.attempts] == [
        ("openai:gpt-4o~429@30*", "rate_limited", 30.0),
        ("openai:gpt-4o-mini", None, 0.0),
    ]
    assert _requests(simulator, handle.id) == 2
    meta = redis.Redis.from_url(redis_url).hget(JobKeys(handle.id).meta, "requeues")
    assert meta is None  # never re-queued
    assert [e.type for e in events].count("done") == 1
    # the next job does not even ask the held model: its shared not-before time applies to everyone
    handle, _, result = _run(client, "openai:gpt-4o~429@30*", fallbacks=("openai:gpt-4o-mini",))
    assert result.status == "succeeded" and _requests(simulator, handle.id) == 1
    assert (result.attempts[0].status, result.attempts[0].error_type) == ("skipped", "retry_later")


def test_a_job_told_to_wait_again_and_again_fails_after_max_requeues(
    redis_url: str, client: Client, simulator: SimulatorThread, tmp_path
) -> None:
    """No deadline, a model that answers 429 + retry-after 1 s forever, waits over the in-worker
    cap: the job is re-queued twice (max_requeues = 2), then ends failed, typed, never circling."""
    config = tmp_path / "llmq.toml"
    config.write_text("max_inworker_wait_s = 0.2\nmax_requeues = 2\n")
    settings = Settings(
        redis_url=redis_url, pool="threads", concurrency=4, coalesce_ms=20.0, claim_lease_s=10, config=str(config)
    )
    app = create_app(settings, provider_env=provider_env(simulator.url))
    try:
        with start_worker(app, pool="threads", concurrency=4, perform_ping_check=False, shutdown_timeout=10):
            handle, events, result = _run(client, "openai:gpt-4o~429@1*")
    finally:
        close_runner(app)
    assert result.status == "failed" and result.error.type == "requeue_limit"
    assert "after 2 re-queues" in result.error.message
    assert _requests(simulator, handle.id) == 3  # one request per run: sent, told to wait, re-queued
    assert [a.error_type for a in result.attempts].count("rate_limited") == 3
    assert events[-1].type == "error"

"""Two real worker processes share one set of limits: RPM, the 429 not-before time, the breaker.

Each worker consumes its own queue, so the test decides which process runs which job. The
simulator's request history (its own clock, on this host) is the ground truth of what reached
the "provider".

The RPM check is honest about time: a 60 RPM limit is a token bucket refilled at 1 request/s with
a burst of 1, so it admits at most ``1 + t`` requests in any ``t`` seconds and never more than
60 in a 60-second window. Running a full minute is too slow for a test, so it checks that bound
for every window of the run (~20 s, 20 requests, offered all at once), with 0.25 s allowed for
the jitter between the limiter's clock and the moment a request reaches the simulator.
"""

from __future__ import annotations

import json
import os
import time
import urllib.request
from collections.abc import Iterator

import pytest
import redis

from llmq.devstack import LocalStack
from producers import Client
from tests.support.waits import until

pytestmark = pytest.mark.slow

LIMITED = "openai:gpt-4o-mini"
CONFIG = """
max_inworker_wait_s = 10

[models."openai:gpt-4o-mini"]
rpm = 60

[models."openai:gpt-4o~503*"]
breaker_failures = 2
breaker_cooldown_s = 60

[models."openai:gpt-4o~503,503"]
breaker_failures = 2
breaker_cooldown_s = 2

[models."openai:gpt-4o~slow@5"]
ttft_limit_s = 0.5
"""
JITTER_S = 0.25


@pytest.fixture(scope="module")
def stack(redis_server_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    config = tmp_path_factory.mktemp("limits") / "llmq.toml"
    config.write_text(CONFIG)
    env = {**os.environ, "LLMQ_REDIS_URL": redis_server_url.rsplit("/", 1)[0] + "/5"}
    redis.Redis.from_url(env["LLMQ_REDIS_URL"]).flushdb()
    with LocalStack(env=env) as s:
        s.start_redis()
        s.start_simulator()
        for name, queue in (("worker-a", "llmq-a"), ("worker-b", "llmq-b")):
            s.start_worker(concurrency=8, name=name, extra_env={"LLMQ_CONFIG": str(config), "LLMQ_QUEUE": queue})
        s.wait_for_workers(2)
        yield s


@pytest.fixture(scope="module")
def clients(stack: LocalStack) -> Iterator[tuple[Client, Client]]:
    with Client(stack.redis_url, queue="llmq-a") as a, Client(stack.redis_url, queue="llmq-b") as b:
        yield a, b


def _history(stack: LocalStack, job: str | None = None) -> list[dict]:
    url = f"{stack.simulator_url}/_sim/requests" + (f"?job={job}" if job else "")
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def _job(model: str, text: str, fallbacks: tuple[str, ...] = ()) -> dict:
    return {"model": model, "fallbacks": list(fallbacks), "messages": [{"role": "user", "content": text}]}


def test_two_workers_together_stay_under_60_rpm(stack: LocalStack, clients: tuple[Client, Client]) -> None:
    handles = {
        queue: [client.submit(_job(LIMITED, f"{queue} job {i}")) for i in range(10)]
        for queue, client in zip(("a", "b"), clients, strict=True)
    }
    results = {q: [h.result(timeout=120) for h in hs] for q, hs in handles.items()}
    assert all(r.status == "succeeded" for rs in results.values() for r in rs)

    queue_of = {h.id: q for q, hs in handles.items() for h in hs}
    sent = sorted(
        (r["started"], queue_of[r["job"]])
        for r in _history(stack)
        if r["job"] in queue_of and r["model"] == "gpt-4o-mini"
    )
    assert len(sent) == 20  # one request per job: waiting for the limit never cost a request
    times = [t for t, _ in sent]
    for i, start in enumerate(times):
        for j in range(i + 1, len(times)):
            # j - i + 1 requests within times[j] - start seconds: at most 1 + 1/s * (that + jitter)
            assert j - i + 1 <= 1 + (times[j] - start + JITTER_S), (i, j, times[j] - start)
        assert sum(1 for t in times[i:] if t < start + 60) <= 60

    # both processes were sending during the same stretch: the limit held across them
    spans = {q: [t for t, qq in sent if qq == q] for q in ("a", "b")}
    assert max(min(s) for s in spans.values()) < min(max(s) for s in spans.values())
    # waits longer than a worker slot may be held were re-queued, not slept
    requeued = [a for rs in results.values() for r in rs for a in r.attempts if a.error_type == "retry_later"]
    assert requeued and all(a.status == "failed" for a in requeued)


def test_a_429_seen_by_one_worker_makes_the_other_wait(stack: LocalStack, clients: tuple[Client, Client]) -> None:
    model = "openai:gpt-4o-mini~429@6"  # each job's first request gets 429, retry-after 6 s
    client_a, client_b = clients
    first = client_a.submit(_job(model, "first"))
    seen = until(
        lambda: [r for r in _history(stack, first.id) if r["outcome"] == "error_429"],
        "worker a to send its request",
        60,
        0.02,
    )
    limited_at = seen[0]["ended"]

    second = client_b.submit(_job(model, "second"))  # runs on worker b, during worker a's wait
    submitted_at = time.time()
    assert first.result(timeout=30).status == "succeeded"
    assert second.result(timeout=30).status == "succeeded"

    second_sent = min(r["started"] for r in _history(stack, second.id))
    assert submitted_at < limited_at + 6.0  # submitted during the wait: worker b could have sent at once...
    assert second_sent >= limited_at + 6.0 - 0.05  # ...but waited for the not-before time


def test_a_breaker_opened_on_one_worker_skips_the_model_on_the_other(
    stack: LocalStack, clients: tuple[Client, Client]
) -> None:
    broken = "openai:gpt-4o~503*"
    client_a, client_b = clients
    one = client_a.submit(_job(broken, "one", fallbacks=("openai:gpt-4o",))).result(timeout=30)
    assert one.status == "succeeded" and one.model_used == "openai:gpt-4o"
    assert [(a.status, a.error_type) for a in one.attempts[:3]] == [
        ("failed", "server_error"),
        ("failed", "server_error"),  # the second failure opened the breaker...
        ("skipped", None),  # ...so the next retry was skipped, not sent
    ]
    handle = client_b.submit(_job(broken, "two", fallbacks=("openai:gpt-4o",)))
    two = handle.result(timeout=30)
    assert two.status == "succeeded" and two.model_used == "openai:gpt-4o"
    assert two.attempts[0].status == "skipped" and "circuit breaker open" in (two.attempts[0].message or "")
    assert [r["model"] for r in _history(stack, handle.id)] == ["gpt-4o"]


def test_a_job_whose_only_model_is_behind_an_open_breaker_waits_for_it_instead_of_failing(
    stack: LocalStack, clients: tuple[Client, Client]
) -> None:
    """Two 503s open the model's breaker (cooldown 2 s); the job has no other model, so it is
    re-queued for the cooldown, becomes the half-open probe and succeeds: a short outage costs a
    wait, not the job (and not one request more than the probe)."""
    handle = clients[1].submit(_job("openai:gpt-4o~503,503", "outage"))
    result = handle.result(timeout=60)
    assert result.status == "succeeded", result.error
    assert [(a.status, a.error_type) for a in result.attempts] == [
        ("failed", "server_error"),
        ("failed", "server_error"),  # this failure opened the breaker...
        ("skipped", None),  # ...so the retry was not sent: the job went back to the queue
        ("succeeded", None),  # the half-open probe, after the cooldown
    ]
    assert [r["outcome"] for r in sorted(_history(stack, handle.id), key=lambda r: r["started"])] == [
        "error_503",
        "error_503",
        "ok",
    ]


def test_a_slow_first_token_falls_back_and_closes_the_upstream(
    stack: LocalStack, clients: tuple[Client, Client]
) -> None:
    handle = clients[0].submit(_job("openai:gpt-4o~slow@5", "slow", fallbacks=("openai:gpt-4o",)))
    result = handle.result(timeout=30)
    assert result.status == "succeeded" and result.model_used == "openai:gpt-4o"
    assert [(a.model, a.error_type) for a in result.attempts] == [
        ("openai:gpt-4o~slow@5", "first_token_timeout"),
        ("openai:gpt-4o", None),
    ]
    # it did not sit out the 5 s: the slow upstream was closed before it sent anything, and the
    # fallback's request started before the slow one would have answered
    slow, fallback = sorted(_history(stack, handle.id), key=lambda r: r["started"])
    assert (slow["outcome"], fallback["outcome"]) == ("closed_early", "ok")
    assert fallback["started"] < slow["started"] + 5
    until(lambda: _history(stack, handle.id)[0]["outcome"] != "open", "the slow request to end", 30)
    assert _history(stack, handle.id)[0]["outcome"] == "closed_early"

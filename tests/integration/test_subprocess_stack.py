"""A real ``celery worker -P gevent`` subprocess and the ``llmq`` CLI against it."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from collections.abc import Iterator

import pytest
import redis

from llmq.devstack import LocalStack
from producers import Client
from tests.support.receiver import Receiver
from tests.support.waits import until
from workers.contract.webhooks import verify

pytestmark = pytest.mark.slow
WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"gevent-worker-webhook-secret-32!").decode()


@pytest.fixture(scope="module")
def stack(redis_server_url: str) -> Iterator[LocalStack]:
    env = {
        **os.environ,
        "LLMQ_REDIS_URL": redis_server_url.replace("/0", "/3"),
        # webhook deliveries to the tests' receivers on 127.0.0.1
        "LLMQ_WEBHOOK_ALLOW_NETWORKS": "127.0.0.0/8",
        "LLMQ_WEBHOOK_SECRET": WEBHOOK_SECRET,
    }
    redis.Redis.from_url(env["LLMQ_REDIS_URL"]).flushdb()
    with LocalStack(env=env) as s:
        s.start_redis()
        s.start_simulator(tokens_per_s=400)
        s.start_worker(pool="gevent", concurrency=50, name="gevent1")
        s.wait_for_workers(1)
        yield s


def _llmq(stack: LocalStack, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {**stack.env, **stack.provider_env()}
    return subprocess.run(
        [sys.executable, "-m", "llmq.cli", *args], env=env, capture_output=True, text=True, timeout=timeout
    )


def test_gevent_worker_runs_streamed_and_plain_jobs(stack: LocalStack) -> None:
    with Client(stack.redis_url) as client:
        handles = [
            client.submit(
                {
                    "model": "openai:gpt-4o-mini",
                    "stream": i % 2 == 0,
                    "messages": [{"role": "user", "content": f"job {i}"}],
                }
            )
            for i in range(40)
        ]
        for i, handle in enumerate(handles):
            events = list(handle.stream(timeout=60))
            seqs = [e.seq for e in events]
            assert seqs == sorted(seqs)
            assert [e.type for e in events].count("done") == 1 and events[-1].type == "done"
            result = handle.result(timeout=5)
            assert result.status == "succeeded" and result.usage.completion_tokens == 20
            deltas = "".join(e.text for e in events if e.type == "delta")
            assert deltas == (result.content if i % 2 == 0 else "")
    # started with -P gevent: Celery's "must use the -P argument" notice about the pool setting is wrong here
    log = (stack.log_dir / "gevent1.log").read_text(errors="replace")
    assert "worker_pool setting shouldn't be used" not in log, log[-3000:]


def test_cli_submit_json_and_exit_status(stack: LocalStack) -> None:
    ok = _llmq(stack, "submit", "hello from the cli", "--model", "openai:gpt-4o-mini", "--json")
    assert ok.returncode == 0, ok.stderr
    result = json.loads(ok.stdout)
    assert result["status"] == "succeeded" and result["content"]

    failed = _llmq(stack, "submit", "no key", "--model", "openai:gpt-4o~401*", "--json")
    assert failed.returncode == 1
    assert json.loads(failed.stdout)["error"]["type"] == "authentication_error"

    invalid = _llmq(stack, "submit", "x", "--model", "not a model", "--json")
    assert invalid.returncode == 2 and "invalid job" in invalid.stderr


def test_cli_stream_and_subscribe(stack: LocalStack) -> None:
    streamed = _llmq(stack, "submit", "stream me", "--model", "openai:gpt-4o-mini", "--stream", "--id", "cli-stream-1")
    assert streamed.returncode == 0, streamed.stderr
    text = streamed.stdout.strip()
    assert len(text.split()) == 20
    replay = _llmq(stack, "subscribe", "cli-stream-1")
    assert replay.returncode == 0 and replay.stdout.strip() == text
    as_json = _llmq(stack, "subscribe", "cli-stream-1", "--json")
    types = [json.loads(line)["type"] for line in as_json.stdout.splitlines()]
    assert types[0] == "start" and types[-1] == "done"


def test_the_worker_consumes_through_the_shared_client_transport(stack: LocalStack) -> None:
    """``workers/runtime/broker.py`` is what the worker runs on; producers keep kombu's plain transport."""
    from workers.runtime.app import create_app
    from workers.settings import Settings

    app = create_app(Settings(redis_url=stack.redis_url))
    stats = app.control.inspect(timeout=5).stats() or {}
    assert stats, "no worker answered"
    assert {s["broker"]["transport"] for s in stats.values()} == {"workers.runtime.broker:Transport"}
    assert app.connection().as_uri().startswith("redis://")  # what Flower reads queue lengths from


def test_a_gevent_worker_aborts_a_cancelled_whole_body_call(stack: LocalStack) -> None:
    import time

    with Client(stack.redis_url) as client:
        handle = client.submit(
            {"model": "openai:gpt-4o-mini~stall@30", "stream": False, "messages": [{"role": "user", "content": "x"}]}
        )
        time.sleep(1.0)  # the worker is blocked waiting for the answer
        assert handle.cancel()
        result = handle.result(timeout=15)  # the upstream would answer only after 30 s
        assert result.status == "cancelled"


def test_a_gevent_workers_deliverer_is_not_held_up_by_a_hanging_receiver(stack: LocalStack) -> None:
    """Under gevent the deliverer's pool is greenlets: receivers that never answer tie up some of its
    slots, while jobs keep running and another receiver gets its signed deliveries."""
    with Receiver(lambda _id, _n: 0) as hanging, Receiver() as good, Client(stack.redis_url) as client:
        job = {"model": "openai:gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
        stuck = [client.submit({**job, "webhook": hanging.url}).id for _ in range(3)]
        until(lambda: hanging.hanging == 3, "three deliveries hanging", 60)
        plain = [client.submit(job).id for _ in range(20)]
        hooked = [client.submit({**job, "webhook": good.url}).id for _ in range(5)]
        for job_id in stuck + plain + hooked:
            assert client.result(job_id, timeout=60).status == "succeeded"
        until(lambda: len(good.answered(200)) == 5, "the good receiver's deliveries", 60)
        # (an attempt times out after 10 s and is tried again: more may be hanging by now)
        assert hanging.hanging >= 3 and not hanging.answered(200)
    assert {d.headers["webhook-id"] for d in good.deliveries} == {f"msg_{i}" for i in hooked}
    for delivery in good.deliveries:
        verify(WEBHOOK_SECRET, delivery.headers, delivery.body)

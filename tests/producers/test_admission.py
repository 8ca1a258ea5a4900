"""``max_queued``: a submit over a tenant's limit is refused at once, typed, and leaves nothing behind.

Client and AsyncClient raise :class:`QueueFullError` (a :class:`SubmitRefusedError`), the gateway
answers 429 with ``Retry-After`` in OpenAI's error shape (the official SDK raises its
``RateLimitError``), ``llmq submit`` prints one line and exits 75; ``llmq batch`` pauses, resumes and
writes every line. The limit comes from the workers' published configuration (``[tenants.<name>]``).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import httpx
import openai
import pytest
import redis

from llmq.cli import EXIT_REFUSED
from producers import AsyncClient, Client
from producers.batch import run_batch
from producers.errors import QueueFullError, SubmitRefusedError
from producers.gateway import GatewaySettings, create_gateway
from producers.gateway.server import GatewayThread
from producers.settings import ProducerSettings
from simulator.app import SimulatorThread
from workers.connections.schedule import conf_fields, publish_conf, queue_prefix
from workers.contract import JobKeys

P = queue_prefix("llmq")
JOB = {"model": "openai:gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}


def _limit(r: redis.Redis, tenant: str, max_queued: int, retry_after_s: float = 2.0) -> None:
    fields = conf_fields(
        weights={},
        key_concurrency=1,
        keys={},
        retry_after_s=retry_after_s,
        tenants={tenant: {"max_queued": max_queued}},
    )
    publish_conf(r, fields)


def test_the_client_refuses_past_max_queued_and_registers_nothing(client: Client, redis_client: redis.Redis) -> None:
    _limit(redis_client, "acme", 3, retry_after_s=1.5)
    for n in range(3):
        assert client.submit({**JOB, "id": f"ok-{n}", "tenant": "acme"}).enqueued
    with pytest.raises(QueueFullError) as refused:
        client.submit({**JOB, "id": "over", "tenant": "acme"})
    exc = refused.value
    assert isinstance(exc, SubmitRefusedError)
    assert (exc.tenant, exc.queued, exc.max_queued, exc.retry_after_s) == ("acme", 3, 3, 1.5)
    assert "queue full" in str(exc) and "acme" in str(exc)
    assert not redis_client.exists(JobKeys("over").meta)  # nothing half-registered
    assert client.status("over") is None
    assert redis_client.zcard(f"{P}pending:acme") == 0  # pushed ones left the pending set
    assert client.submit({**JOB, "id": "other", "tenant": "other"}).enqueued  # other tenants: no limit
    assert not client.submit({**JOB, "id": "ok-1", "tenant": "acme"}).enqueued  # a duplicate is not refused


def test_the_async_client_refuses_the_same_way(redis_url: str, redis_client: redis.Redis) -> None:
    _limit(redis_client, "acme", 1)

    async def scenario() -> None:
        async with AsyncClient(settings=ProducerSettings(redis_url=redis_url)) as aclient:
            assert (await aclient.submit({**JOB, "id": "a-1", "tenant": "acme"})).enqueued
            with pytest.raises(QueueFullError) as refused:
                await aclient.submit({**JOB, "id": "a-2", "tenant": "acme"})
            assert refused.value.max_queued == 1 and refused.value.retry_after_s == 2.0

    asyncio.run(scenario())
    assert not redis_client.exists(JobKeys("a-2").meta)


def test_the_gateway_answers_429_with_retry_after_in_openais_shape(redis_url: str, redis_client: redis.Redis) -> None:
    _limit(redis_client, "sdk-team", 1, retry_after_s=2.5)
    settings = GatewaySettings(redis_url=redis_url, tokens={"tok-1": "sdk-team"})
    with GatewayThread(create_gateway(settings)) as gateway:
        sdk = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="tok-1", max_retries=0, timeout=30)
        with Client(redis_url) as client:
            client.submit({**JOB, "tenant": "sdk-team"})  # the tenant's one queued job (no worker runs)
        with pytest.raises(openai.RateLimitError) as refused:
            sdk.chat.completions.create(model="openai:gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
        response = refused.value.response
        assert response.status_code == 429 and response.headers["retry-after"] == "3"
        error = response.json()["error"]
        assert (
            error["code"] == "queue_full" and error["type"] == "rate_limit_error" and "max_queued 1" in error["message"]
        )
        # /v1/jobs too
        reply = httpx.post(f"{gateway.url}/v1/jobs", json=JOB, headers={"authorization": "Bearer tok-1"}, timeout=30)
        assert reply.status_code == 429 and reply.json()["error"]["code"] == "queue_full"
        sdk.close()


def test_the_cli_prints_one_line_and_exits_75(redis_url: str, redis_client: redis.Redis) -> None:
    _limit(redis_client, "cli-t", 1)
    argv = [
        sys.executable,
        "-m",
        "llmq.cli",
        "submit",
        "hello",
        "--tenant",
        "cli-t",
        "--no-wait",
        "-m",
        "openai:gpt-4o-mini",
    ]
    env = {"LLMQ_REDIS_URL": redis_url, "PATH": "/usr/bin:/bin"}
    first = subprocess.run(argv, capture_output=True, text=True, timeout=120, env=env)
    assert first.returncode == 0, first.stderr
    second = subprocess.run(argv, capture_output=True, text=True, timeout=120, env=env)
    assert second.returncode == EXIT_REFUSED == 75
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("llmq: queue full") and second.stdout == ""


def test_a_batch_pauses_at_max_queued_and_writes_every_line(
    redis_url: str, redis_client: redis.Redis, simulator: SimulatorThread, worker: object, tmp_path: Path
) -> None:
    # 16 slots busy for 2 s: the first 20 lines are sent long before a slot frees (submits take
    # milliseconds, even on a loaded machine), so the 21st finds 4 queued and the batch pauses
    simulator.simulator.config.latency = 2.0
    _limit(redis_client, "batcher", 4, retry_after_s=0.2)
    source = tmp_path / "in.jsonl"
    source.write_text(
        "".join(
            json.dumps({"custom_id": f"line-{n}", "prompt": f"line {n}", "max_tokens": 5}) + "\n" for n in range(30)
        )
    )
    summary = run_batch(
        source, tmp_path / "out.jsonl", model="openai:gpt-4o-mini", tenant="batcher", redis_url=redis_url, window=30
    )
    assert summary.complete and summary.succeeded == 30 and summary.failed == 0
    assert summary.pauses > 0  # it did pause
    written = [json.loads(line)["custom_id"] for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert sorted(written) == sorted(f"line-{n}" for n in range(30))

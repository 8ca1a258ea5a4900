"""Where a job's class comes from: the gateway's chat endpoint runs ``interactive``, ``llmq batch`` runs
``bulk``, ``/v1/jobs`` and the clients ``normal``; a header, a body field, a flag or a batch line's field
overrides it. Asserted on the queue's schedule: which class's list the job landed on (no worker runs)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from producers import Client
from producers.batch import run_batch
from producers.batch.formats import LineError, parse_line
from producers.gateway import GatewaySettings, create_gateway
from producers.gateway.server import GatewayThread
from tests.support.brokers import queued_payloads
from workers.connections.schedule import tenant_list

TOKEN = "prio-token"
CHAT = {"model": "openai:gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
JOB = {"model": "openai:gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}


def _classes(r: redis.Redis, tenant: str) -> dict[str, int]:
    return {p: int(r.llen(tenant_list("llmq", p, tenant))) for p in ("interactive", "normal", "bulk")}


@pytest.fixture
def gateway(redis_url: str) -> Iterator[GatewayThread]:
    settings = GatewaySettings(redis_url=redis_url, tokens={TOKEN: "team"}, result_timeout_s=0.2)
    with GatewayThread(create_gateway(settings)) as server:
        yield server


def _post(gateway: GatewayThread, path: str, body: dict[str, object], **headers: str) -> httpx.Response:
    return httpx.post(
        f"{gateway.url}/v1/{path}", json=body, headers={"authorization": f"Bearer {TOKEN}", **headers}, timeout=30
    )


def test_the_gateway_runs_chat_interactive_and_jobs_normal_unless_told(
    gateway: GatewayThread, redis_client: redis.Redis
) -> None:
    _post(gateway, "chat/completions", CHAT)  # times out waiting (no worker): the job stays queued
    assert _classes(redis_client, "team") == {"interactive": 1, "normal": 0, "bulk": 0}
    _post(gateway, "chat/completions", CHAT, **{"x-llmq-priority": "bulk"})
    _post(gateway, "chat/completions", {**CHAT, "priority": "normal"}, **{"x-llmq-priority": "bulk"})  # body wins
    assert _classes(redis_client, "team") == {"interactive": 1, "normal": 1, "bulk": 1}
    assert _post(gateway, "jobs", JOB).status_code == 202
    assert _post(gateway, "jobs", JOB, **{"x-llmq-priority": "interactive"}).status_code == 202
    assert _classes(redis_client, "team") == {"interactive": 2, "normal": 2, "bulk": 1}
    bad = _post(gateway, "jobs", JOB, **{"x-llmq-priority": "urgent"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "x-llmq-priority"
    keyed = _post(gateway, "jobs", JOB, **{"x-llmq-concurrency-key": "doc-7"})
    assert keyed.status_code == 202
    headers = [json.loads(p)["headers"]["llmq"] for p in queued_payloads(redis_client, "llmq")]
    (keyed_header,) = [h for h in headers if h.get("concurrency_key") == "doc-7"]
    assert (keyed_header["priority"], keyed_header["tenant"]) == ("normal", "team")


def test_batch_lines_run_bulk_unless_the_line_or_the_flag_says(
    client: Client, redis_client: redis.Redis, tmp_path: Path
) -> None:
    source = tmp_path / "in.jsonl"
    lines = [{"custom_id": "a", "prompt": "x"}, {"custom_id": "b", "prompt": "y", "priority": "interactive"}]
    source.write_text("".join(json.dumps(line) + "\n" for line in lines))
    summary = run_batch(
        source, tmp_path / "out.jsonl", model="openai:gpt-4o-mini", client=client, tenant="bt", stall_timeout_s=0.5
    )
    assert summary.submitted == 2 and summary.stalled  # no worker: the lines stay queued
    assert _classes(redis_client, "bt") == {"interactive": 1, "normal": 0, "bulk": 1}
    parsed = parse_line(
        json.dumps({"custom_id": "c", "prompt": "z", "concurrency_key": "k1"}), 1, default_model="openai:x"
    )
    assert parsed.job.concurrency_key == "k1" and "priority" not in parsed.job.model_fields_set
    with pytest.raises(LineError) as bad:
        parse_line(json.dumps({"custom_id": "d", "prompt": "z", "priority": "urgent"}), 2, default_model="openai:x")
    assert bad.value.issues[0].param == "priority"


def test_a_misspelt_priority_is_refused_everywhere_with_a_suggestion(
    gateway: GatewayThread, client: Client, redis_url: str
) -> None:
    """An unknown priority is a typed refusal naming the classes and the nearest one: the job field
    (client, gateway body, batch line), the gateway header and the CLI flag; nothing is queued."""
    import subprocess
    import sys

    from producers.errors import InvalidJobError

    with pytest.raises(InvalidJobError) as caught:
        client.submit({**JOB, "priority": "interactiv"})
    assert "did you mean 'interactive'?" in str(caught.value)
    body = _post(gateway, "chat/completions", {**CHAT, "priority": "Bulk"})
    assert body.status_code == 400 and "did you mean 'bulk'?" in body.json()["error"]["message"]
    header = _post(gateway, "jobs", JOB, **{"x-llmq-priority": "norma"})
    assert header.status_code == 400 and "did you mean 'normal'?" in header.json()["error"]["message"]
    with pytest.raises(LineError) as line:
        parse_line(json.dumps({"custom_id": "a", "model": JOB["model"], "prompt": "x", "priority": "buk"}), 1)
    assert "did you mean 'bulk'?" in str(line.value)
    env = {"PATH": "/usr/bin:/bin", "LLMQ_REDIS_URL": redis_url}
    cli = subprocess.run(
        [sys.executable, "-m", "llmq.cli", "submit", "--model", str(JOB["model"]), "--priority", "interactiv", "hi"],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    assert cli.returncode == 2 and "did you mean 'interactive'?" in cli.stderr, cli.stderr

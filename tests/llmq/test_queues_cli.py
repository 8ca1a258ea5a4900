"""``llmq queues [--json]``: the schedule per class and per tenant, from the broker's Redis."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import redis

from producers import Client

JOB = {"model": "openai:gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}


def _queues(redis_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "LLMQ_REDIS_URL": redis_url}
    env.pop("LLMQ_BROKER_URL", None)
    return subprocess.run(
        [sys.executable, "-m", "llmq.cli", "queues", *args], capture_output=True, text=True, timeout=120, env=env
    )


def test_queues_shows_each_class_and_tenant(redis_url: str, redis_client: redis.Redis, client: Client) -> None:
    for _ in range(3):
        client.submit({**JOB, "tenant": "acme", "priority": "bulk"})
    client.submit({**JOB, "tenant": "web", "priority": "interactive"})
    done = _queues(redis_url, "--json")
    assert done.returncode == 0, done.stderr
    view = json.loads(done.stdout)
    assert view["queue"] == "llmq" and view["queued"] == 4 and view["running"] == 0
    # the schema docs/scheduling.md shows
    assert set(view) == {"queue", "queued", "running", "unscheduled", "at", "classes", "tenants"}
    assert {frozenset(c) for c in view["classes"]} == {frozenset({"priority", "queued", "running", "oldest_wait_s"})}
    assert {frozenset(t) for t in view["tenants"]} == {
        frozenset({"priority", "tenant", "queued", "running", "parked", "at_limit", "oldest_wait_s"})
    }
    classes = {c["priority"]: c["queued"] for c in view["classes"]}
    assert classes == {"interactive": 1, "normal": 0, "bulk": 3}
    tenants = {(t["tenant"], t["priority"]): (t["queued"], t["running"]) for t in view["tenants"]}
    assert tenants == {("acme", "bulk"): (3, 0), ("web", "interactive"): (1, 0)}
    text = _queues(redis_url)
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    assert lines[0] == "queue llmq: 4 queued"
    assert any(line.split()[:3] == ["bulk", "3", "0"] for line in lines)
    assert any(line.split()[:4] == ["acme", "bulk", "3", "0"] for line in lines)


def test_queues_on_rabbitmq_says_where_to_look(redis_url: str) -> None:
    env = {**os.environ, "LLMQ_REDIS_URL": redis_url, "LLMQ_BROKER_URL": "amqp://guest:guest@127.0.0.1:1//"}
    done = subprocess.run(
        [sys.executable, "-m", "llmq.cli", "queues"], capture_output=True, text=True, timeout=120, env=env
    )
    assert done.returncode == 2 and "RabbitMQ" in done.stderr and "llmq.interactive" in done.stderr

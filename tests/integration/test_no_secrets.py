"""Provider keys never leave the worker: not in jobs, results, events, Redis, metrics or logs."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
import redis
from celery.contrib.testing.worker import start_worker
from prometheus_client import generate_latest

from producers import Client
from simulator.app import SimulatorThread
from workers.runtime.app import close_runner, create_app, runner_for
from workers.runtime.telemetry import RedactingFilter, redact
from workers.settings import Settings

SECRET = "sk-proj-THIS_IS_A_SECRET_KEY_0123456789"


@pytest.fixture
def keyed_worker(redis_url: str, simulator: SimulatorThread) -> Iterator[object]:
    env = {"OPENAI_BASE_URL": f"{simulator.url}/v1", "OPENAI_API_KEY": SECRET, "ANTHROPIC_API_KEY": SECRET}
    app = create_app(Settings(redis_url=redis_url, pool="threads", concurrency=4), provider_env=env)
    with start_worker(app, pool="threads", concurrency=4, perform_ping_check=False) as w:
        w.llmq_app = app  # type: ignore[attr-defined]
        yield w
    close_runner(app)


def test_the_key_appears_nowhere(keyed_worker, client: Client, redis_client: redis.Redis, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    ok = client.submit({"model": "openai:gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})
    bad = client.submit({"model": "openai:gpt-4o~401*", "messages": [{"role": "user", "content": "hi"}]})
    results = [ok.result(timeout=30), bad.result(timeout=30)]
    assert [r.status for r in results] == ["succeeded", "failed"]
    events = [e.model_dump_json() for h in (ok, bad) for e in h.stream(timeout=5)]
    dump = []
    for key in redis_client.scan_iter("*"):
        kind = redis_client.type(key)
        if kind == b"string":
            dump.append(redis_client.get(key))
        elif kind == b"hash":
            dump.append(repr(redis_client.hgetall(key)).encode())
        elif kind == b"stream":
            dump.append(repr(redis_client.xrange(key)).encode())
        elif kind == b"list":
            dump.append(repr(redis_client.lrange(key, 0, -1)).encode())
    metrics = generate_latest(runner_for(keyed_worker.llmq_app).res.metrics.registry)  # type: ignore[attr-defined]
    haystacks = [r.model_dump_json() for r in results] + events + [caplog.text, metrics.decode()]
    haystacks += [d.decode("utf-8", "replace") for d in dump]
    assert all(SECRET not in h and SECRET[:12] not in h for h in haystacks)


def test_log_redaction() -> None:
    assert SECRET not in redact(f"calling with Authorization: Bearer {SECRET}")
    assert "abcdef123456" not in redact('{"api_key": "abcdef123456"}')
    assert redact("nothing secret here") == "nothing secret here"
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "key=%s", (SECRET,), None)
    assert RedactingFilter().filter(record) and SECRET not in record.getMessage()

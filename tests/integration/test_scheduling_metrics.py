"""The schedule's metrics: queue length, waiting and running jobs by class, wait time by class.

The queue's gauges are read from Redis at each scrape (``workers/runtime/schedmetrics.py``), with a
``tenant`` label only for tenants the configuration names (the others summed as ``other``); a worker
process counts the jobs it runs and how long each waited, by class (``workers/runtime/telemetry.py``).
Real Redis, real producer, the broker transport's own fetch, an in-process worker and the simulator.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import redis
from celery.contrib.testing.worker import start_worker
from kombu import Connection
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from producers import Client
from simulator.app import SimulatorThread
from simulator.env import provider_env
from tests.support.waits import until
from workers.runtime.app import close_runner, create_app, runner_for
from workers.runtime.broker import Transport
from workers.runtime.schedmetrics import ScheduleCollector
from workers.settings import Settings

JOB = {"model": "openai:gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def _samples(registry: CollectorRegistry) -> Samples:
    text = generate_latest(registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _named(samples: Samples, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {labels: value for (n, labels), value in samples.items() if n == name}


def test_queue_gauges_by_class_and_named_tenant_with_others_as_other(
    redis_url: str, redis_client: redis.Redis, client: Client
) -> None:
    for _ in range(3):
        client.submit({**JOB, "tenant": "acme", "priority": "bulk"})
    with Connection(redis_url, transport=Transport, transport_options={"visibility_timeout": 3600}) as conn:
        held = conn.default_channel.basic_get("llmq")  # a worker holds acme's first job
        assert held is not None
        for tenant in ("zed", "yan"):
            client.submit({**JOB, "tenant": tenant, "priority": "bulk"})
        client.submit({**JOB, "tenant": "yan", "priority": "interactive"})

        registry = CollectorRegistry()
        registry.register(ScheduleCollector(lambda: redis_client, "llmq", ["acme", "*"]))
        samples = _samples(registry)
        held.ack()

    def labels(**kv: str) -> tuple[tuple[str, str], ...]:
        return tuple(sorted({"queue": "llmq", **kv}.items()))

    assert _named(samples, "llmq_queue_length") == {labels(): 5.0}
    assert _named(samples, "llmq_queue_jobs") == {
        labels(priority="bulk", tenant="acme"): 2.0,
        labels(priority="bulk", tenant="other"): 2.0,  # zed and yan, not named: one series
        labels(priority="interactive", tenant="other"): 1.0,
    }
    assert _named(samples, "llmq_queue_running") == {
        labels(priority="bulk", tenant="acme"): 1.0,
        labels(priority="bulk", tenant="other"): 0.0,
        labels(priority="interactive", tenant="other"): 0.0,
    }
    oldest = _named(samples, "llmq_queue_oldest_wait_seconds")
    assert set(oldest) == {labels(priority=p) for p in ("interactive", "normal", "bulk")}
    assert oldest[labels(priority="bulk")] >= oldest[labels(priority="interactive")] >= 0.0
    assert oldest[labels(priority="normal")] == 0.0  # nothing waits there
    tenants = {dict(labels).get("tenant") for (name, labels) in samples if name.startswith("llmq_queue_")}
    assert tenants == {None, "acme", "other"}  # bounded by the configuration, whatever tenants submit


def test_a_worker_counts_running_jobs_and_their_wait_by_class(
    redis_url: str, redis_client: redis.Redis, simulator: SimulatorThread, client: Client, tmp_path: Path
) -> None:
    config = tmp_path / "llmq.toml"
    config.write_text("[tenants.acme]\nweight = 2\n")
    reply = "llmq:reply:metrics"
    for _ in range(3):
        client.submit({**JOB, "tenant": "acme", "priority": "interactive", "reply_to": reply})
    for _ in range(2):
        client.submit({**JOB, "tenant": "zed", "priority": "bulk", "reply_to": reply})
    settings = Settings(redis_url=redis_url, pool="threads", concurrency=4, claim_lease_s=10, config=str(config))
    app = create_app(settings, provider_env=provider_env(simulator.url))
    with start_worker(app, pool="threads", concurrency=4, perform_ping_check=False, without_heartbeat=True):
        until(lambda: redis_client.llen(reply) >= 5, "the five jobs to end", 120)
        # a reply is pushed by the terminal write; the run counts itself ended just after it
        until(lambda: runner_for(app).runs_in_flight() == 0, "the five runs' bookkeeping to end", 60)
        samples: dict[tuple[str, tuple[tuple[str, str], ...]], Any] = _samples(runner_for(app).res.metrics.registry)
    close_runner(app)
    waits = _named(samples, "llmq_queue_wait_seconds_count")
    assert waits == {(("priority", "interactive"),): 3.0, (("priority", "bulk"),): 2.0}
    running = _named(samples, "llmq_jobs_running")
    assert running == {(("priority", "interactive"),): 0.0, (("priority", "bulk"),): 0.0}  # all ended
    # the worker's registry carries the queue's gauges too (read from Redis at the scrape)
    assert _named(samples, "llmq_queue_length") == {(("queue", "llmq"),): 0.0}

"""``GET /v1/queues`` (the browser view's queue panel) reads the queue's schedule on a real Redis.

Jobs of two tenants in three classes are queued through a ``Client`` (no worker runs), one of them is
taken by a worker's fetch (the broker transport's own ``basic_get``: held, as running), and each
tenant's token reads the panel: per class, every tenant's jobs counted together (``tenant`` null); per
tenant and class, only the caller's own rows, with what waits, what runs and the oldest one's wait.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx2
import pytest
from kombu import Connection

from producers import Client
from producers.gateway import GatewaySettings, create_gateway
from producers.gateway.server import GatewayThread
from producers.settings import ProducerSettings
from tests.support.brokers import Broker
from workers.contract.schedule import class_queues
from workers.runtime.broker import Transport

TOKENS = {"tok-a-queues-81f2": "team-a", "tok-b-queues-0c4e": "team-b"}
JOB = {"model": "openai:gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}


@pytest.fixture
def gw(redis_url: str) -> Iterator[GatewayThread]:
    with GatewayThread(create_gateway(GatewaySettings(redis_url=redis_url, tokens=TOKENS))) as server:
        yield server


def _rows(gw: GatewayThread, token: str) -> dict[tuple[str | None, str | None], dict[str, Any]]:
    reply = httpx2.get(f"{gw.url}/v1/queues", headers={"authorization": f"Bearer {token}"}, timeout=30)
    assert reply.status_code == 200, reply.text
    return {(r["class"], r["tenant"]): r for r in reply.json()["data"]}


def test_the_queue_panel_reads_the_schedule_per_class_and_tenant(
    redis_url: str, client: Client, gw: GatewayThread
) -> None:
    for _ in range(3):
        client.submit({**JOB, "tenant": "team-b"})  # normal
    with Connection(redis_url, transport=Transport, transport_options={"visibility_timeout": 3600}) as conn:
        held = conn.default_channel.basic_get("llmq")  # a worker takes one of team-b's: it runs
        assert held is not None and held.headers["llmq"]["tenant"] == "team-b"
        for _ in range(2):
            client.submit({**JOB, "tenant": "team-a", "priority": "interactive"})
        client.submit({**JOB, "tenant": "team-a", "priority": "bulk"})

        a = _rows(gw, "tok-a-queues-81f2")
        assert {key: (r["depth"], r["running"]) for key, r in a.items()} == {
            ("interactive", None): (2, 0),
            ("normal", None): (2, 1),  # every tenant's, counted together
            ("bulk", None): (1, 0),
            ("interactive", "team-a"): (2, 0),
            ("bulk", "team-a"): (1, 0),
        }  # no row of team-b's
        assert all(r["queue"] == "llmq" for r in a.values())
        assert a[("interactive", "team-a")]["oldest_wait_s"] >= 0 and a[("interactive", "team-a")]["parked"] == 0
        assert a[("interactive", "team-a")]["at_limit"] is False

        b = _rows(gw, "tok-b-queues-0c4e")
        assert {key: (r["depth"], r["running"]) for key, r in b.items() if key[1] is not None} == {
            ("normal", "team-b"): (2, 1)
        }
        held.ack()
    assert _rows(gw, "tok-b-queues-0c4e")[("normal", "team-b")]["running"] == 0


@pytest.mark.parametrize("broker", ["amqp"], indirect=True)
def test_on_rabbitmq_the_panel_counts_each_class_queue(
    redis_url: str, broker: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """RabbitMQ holds the queues there: a row per class queue with its ready jobs (no tenant rows: the
    broker knows no tenants). A class no job was sent to yet counts 0."""
    settings = ProducerSettings(redis_url=redis_url, broker_url=broker.url, queue=broker.queue)
    monkeypatch.setenv("LLMQ_BROKER_URL", broker.url)  # the gateway's queue is on RabbitMQ
    gateway = GatewaySettings(redis_url=redis_url, queue=broker.queue, tokens=TOKENS)
    queues = class_queues(broker.queue)
    try:
        with Client(settings=settings) as client:
            for _ in range(2):
                client.submit({**JOB, "tenant": "team-a", "priority": "bulk"})
            client.submit({**JOB, "tenant": "team-b", "priority": "interactive"})
        with GatewayThread(create_gateway(gateway)) as server:
            rows = _rows(server, "tok-a-queues-81f2")
        assert {key: (r["queue"], r["depth"]) for key, r in rows.items()} == {
            ("interactive", None): (queues["interactive"], 1),
            ("normal", None): (queues["normal"], 0),
            ("bulk", None): (queues["bulk"], 2),
        }
    finally:
        with Connection(broker.url) as conn:
            for name in queues.values():
                if name != broker.queue:
                    conn.default_channel.queue_delete(name)

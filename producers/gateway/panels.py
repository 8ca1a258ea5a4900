"""``GET /v1/queues`` and ``GET /v1/budget``: what the browser view shows besides jobs.

Both read through sources the gateway is given (:class:`Panels`), because what they read belongs to
other rooms: queue depths to the broker transport (priority classes, per-tenant lists), the budget
to the ledger on the worker side, which producers do not import. ``llmq gateway`` wires the real
ones (``llmq/commands/gateway.py``); the defaults here are the queue's schedule on a Redis broker (per
class, and per tenant: ``workers/connections/schedview.py``), else its length, and no budget.
A tenant sees aggregate rows (``tenant`` null) and its own rows, never another tenant's.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from typing import Any

import redis.asyncio as aredis
from kombu import Connection
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from producers.gateway.state import QueueSource, gateway_of
from workers.connections.brokerurl import is_amqp
from workers.connections.redisclient import redis_client
from workers.connections.schedview import queue_view
from workers.contract.schedule import class_queues

__all__ = ["amqp_queue_source", "budget", "default_queue_source", "queues", "schedule_queue_source", "whoami"]


def default_queue_source(client: aredis.Redis, queue: str) -> QueueSource:
    """The broker queue's length (a Redis broker's list), as one aggregate row."""

    async def rows(tenant: str) -> list[dict[str, Any]]:
        depth = await client.llen(queue)
        return [{"queue": queue, "class": None, "tenant": None, "depth": int(depth)}]

    return rows


def amqp_queue_source(broker_url: str, queue: str) -> QueueSource:
    """On RabbitMQ: a row per class, its queue's ready messages (a passive declare of each class's
    queue, ``llmq``, ``llmq.interactive``, ``llmq.bulk``; 0 for one nobody declared yet). RabbitMQ
    knows no tenants, and what runs is unacked there: no per-tenant rows, no ``running``."""

    def read() -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        with Connection(broker_url, connect_timeout=5) as conn:
            for priority, name in class_queues(queue).items():
                channel: Any = conn.channel()  # one each: a queue not declared yet closes its channel
                try:
                    depth = channel.queue_declare(queue=name, passive=True).message_count
                except conn.channel_errors:
                    depth = 0
                finally:
                    with contextlib.suppress(Exception):
                        channel.close()
                out.append({"queue": name, "class": priority, "tenant": None, "depth": int(depth)})
        return out

    async def rows(tenant: str) -> list[dict[str, Any]]:
        return await asyncio.to_thread(read)

    return rows


@functools.cache
def schedule_queue_source(broker_url: str, queue: str) -> QueueSource:
    """The queue's schedule on a Redis broker (``llmq queues``' view): a row per class (every tenant
    summed: ``tenant`` null) and a row per tenant and class, each with its jobs waiting (``depth``,
    parked ones included), held by workers (``running``) and the oldest one's wait in seconds; a
    tenant's rows also say how many wait for their concurrency key (``parked``) and whether it runs
    its ``max_concurrency`` (``at_limit``). Read in a thread with a client of its own (made once)."""
    client = redis_client(broker_url, max_connections=2)

    async def rows(tenant: str) -> list[dict[str, Any]]:
        view = await asyncio.to_thread(queue_view, client, queue)
        out: list[dict[str, Any]] = [
            {
                "queue": queue,
                "class": c.priority,
                "tenant": None,
                "depth": c.queued,
                "running": c.running,
                "oldest_wait_s": _seconds(c.oldest_wait_s),
            }
            for c in view.classes
        ]
        out += [
            {
                "queue": queue,
                "class": t.priority,
                "tenant": t.tenant,
                "depth": t.queued,
                "running": t.running,
                "oldest_wait_s": _seconds(t.oldest_wait_s),
                "parked": t.parked,
                "at_limit": t.at_limit,
            }
            for t in view.tenants
        ]
        return out

    return rows


def _seconds(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


async def queues(request: Request) -> Response:
    gw = gateway_of(request)
    tenant: str = request.state.tenant
    source = gw.panels.queues
    if source is None:
        broker = gw.client.broker_url
        queue = gw.settings.queue
        source = amqp_queue_source(broker, queue) if is_amqp(broker) else schedule_queue_source(broker, queue)
    rows = [r for r in await source(tenant) if r.get("tenant") in (None, tenant)]
    return JSONResponse({"object": "list", "data": rows})


async def budget(request: Request) -> Response:
    gw = gateway_of(request)
    tenant: str = request.state.tenant
    found = await gw.panels.budget(tenant) if gw.panels.budget is not None else None
    if found is None:
        return JSONResponse({"object": "llmq.budget", "available": False, "scopes": []})
    scopes = [s for s in found.get("scopes", []) if s.get("scope") in ("global", f"tenant:{tenant}")]
    return JSONResponse({"object": "llmq.budget", "available": True, **found, "scopes": scopes})


async def whoami(request: Request) -> Response:
    """The caller's tenant (the browser view's header)."""
    return JSONResponse({"object": "llmq.whoami", "tenant": request.state.tenant})

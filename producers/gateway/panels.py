"""``GET /v1/queues`` and ``GET /v1/budget``: what the browser view shows besides jobs.

Both read through sources the gateway is given (:class:`Panels`), because what they read belongs to
other rooms: queue depths to the broker transport (priority classes, per-tenant lists), the budget
to the ledger on the worker side, which producers do not import. ``llmq gateway`` wires the real
ones (``llmq/commands/gateway.py``); the defaults here are the broker queue's length and no budget.
A tenant sees aggregate rows (``tenant`` null) and its own rows, never another tenant's.
"""

from __future__ import annotations

from typing import Any

import redis.asyncio as aredis
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from producers.gateway.state import QueueSource, gateway_of

__all__ = ["budget", "default_queue_source", "queues", "whoami"]


def default_queue_source(client: aredis.Redis, queue: str) -> QueueSource:
    """The broker queue's length (a Redis broker's list), as one aggregate row."""

    async def rows(tenant: str) -> list[dict[str, Any]]:
        depth = await client.llen(queue)
        return [{"queue": queue, "class": None, "tenant": None, "depth": int(depth)}]

    return rows


async def queues(request: Request) -> Response:
    gw = gateway_of(request)
    tenant: str = request.state.tenant
    source = gw.panels.queues or default_queue_source(gw.client.redis, gw.settings.queue)
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

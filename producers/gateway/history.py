"""``GET /v1/jobs`` (the caller's job history), ``POST /v1/jobs/{id}/replay`` (a dead letter again).

The tenant comes from the bearer token and is always one of the filters: a tenant lists, reads
and replays only its own jobs; another tenant's job is a 404, exactly like one that never existed.
"""

from __future__ import annotations

import math
import time
from typing import Any

import redis
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from producers.gateway.errors import GatewayError
from producers.gateway.ids import resolve_id
from producers.gateway.state import gateway_of
from producers.history import HistoryEntry, HistoryQuery, adrive, parse_since
from producers.replay import replay_steps
from producers.watermark import is_out_of_memory

__all__ = ["entry_json", "list_jobs", "own_entry", "replay_job"]

_STATUSES = ("succeeded", "failed", "cancelled")
MAX_LIMIT = 500


def entry_json(entry: HistoryEntry) -> dict[str, Any]:
    data = entry.summary.model_dump(mode="json")
    data["object"] = "llmq.job.summary"
    data["replayed_as"] = entry.replayed_as
    return data


def _float(request: Request, name: str) -> float | None:
    raw = request.query_params.get(name)
    if raw in (None, ""):
        return None
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise GatewayError(400, f"{name} must be a unix time in seconds", param=name)
    return value


def _query(request: Request, tenant: str) -> HistoryQuery:
    params = request.query_params
    status = params.get("status") or None
    if status is not None and status not in _STATUSES:
        raise GatewayError(400, f"status must be one of {', '.join(_STATUSES)}", param="status")
    since = None
    if params.get("since"):
        try:
            since = parse_since(params["since"])
        except ValueError as exc:
            raise GatewayError(400, str(exc), param="since") from None
    try:
        limit = int(params.get("limit", "50"))
    except ValueError:
        raise GatewayError(400, "limit must be an integer", param="limit") from None
    if not 1 <= limit <= MAX_LIMIT:
        raise GatewayError(400, f"limit must be 1-{MAX_LIMIT}", param="limit")
    return HistoryQuery(
        tenant=tenant,
        status=status,
        model=params.get("model") or None,
        error=params.get("error") or None,
        since=since,
        before=_float(request, "before"),
        limit=limit,
    )


async def list_jobs(request: Request) -> Response:
    """The caller's ended jobs, newest first; ``next_before`` pages on (``?before=``)."""
    query = _query(request, request.state.tenant)
    entries = await gateway_of(request).history.list(query)
    more = len(entries) == query.limit
    return JSONResponse(
        {
            "object": "list",
            "data": [entry_json(e) for e in entries],
            "next_before": entries[-1].summary.finished_at if more and entries else None,
        }
    )


async def own_entry(request: Request, job_id: str) -> HistoryEntry | None:
    """The job's history entry if it is the caller's, else None."""
    entry = await gateway_of(request).history.get(job_id)
    if entry is None or entry.summary.tenant != request.state.tenant:
        return None
    return entry


async def replay_job(request: Request) -> Response:
    gw = gateway_of(request)
    path_id: str = request.path_params["job_id"]
    job_id = resolve_id(request.state.tenant, path_id)
    entry = await own_entry(request, job_id)
    if entry is None:
        raise GatewayError(404, f"No ended job with id {path_id!r}.", code="job_not_found")
    dry_run = request.query_params.get("dry_run") in ("1", "true")
    history = gw.history
    steps = replay_steps(entry, now=time.time(), dry_run=dry_run)
    try:
        outcome = await adrive(steps, history.redis, history.script, gw.client.submit)
    except redis.RedisError as exc:  # the replay's record refused at maxmemory: 503 as a submit
        if not is_out_of_memory(exc):
            raise
        raise await gw.client.full_error("recording the replay") from exc
    if outcome.outcome == "not_replayable":
        raise GatewayError(409, f"Job {path_id!r} cannot be replayed: {outcome.detail}.", code="not_replayable")
    if outcome.outcome == "refused":
        raise GatewayError(400, f"The replay of {path_id!r} was refused: {outcome.detail}", code="invalid_job")
    body = {"object": "llmq.job.replay", **outcome.as_dict()}
    if outcome.copy:
        body["links"] = {"copy": f"/v1/jobs/{outcome.copy}"}
    status = 202 if outcome.outcome == "submitted" else 200
    return JSONResponse(body, status_code=status)

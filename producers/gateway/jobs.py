"""``/v1/jobs``: enqueue a CompletionJob, read its status and result, cancel it, follow its events.

Job ids and tenants: a server-made id (``job_`` + 128 random bits) is unguessable. An id the
client chooses (its idempotency key) is stored as ``<tenant>:<id>``, so two tenants can use the
same key without colliding and without learning that the other did; ``job_`` is reserved for
server ids. Every lookup also checks the tenant recorded in the job's metadata, and another
tenant's job is a 404, exactly like a job that does not exist.
"""

from __future__ import annotations

import re
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from producers.client import InvalidJobError
from producers.gateway.body import problems_error, read_json_object
from producers.gateway.errors import GatewayError, scrub_result
from producers.gateway.history import entry_json, own_entry
from producers.gateway.ids import ANY_ID, resolve_id
from producers.gateway.priority import scheduling_fields
from producers.gateway.settings import OnDisconnect
from producers.gateway.sse import EventStreamResponse, JobEventsRenderer
from producers.gateway.state import gateway_of
from producers.gateway.tags import with_header_tags
from producers.gateway.ui import strip_result_text, strip_text
from producers.tracing import incoming_trace
from workers.contract import TERMINAL_EVENT_TYPES, JobKeys, parse_event

__all__ = ["cancel_job", "get_job", "job_events", "resolve_id", "storage_id", "submit_job"]

_CLIENT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$")


def storage_id(tenant: str, requested: object) -> str | None:
    """The id a job is stored under; None lets the job model generate a random one."""
    if requested is None:
        return None
    if not isinstance(requested, str):
        raise GatewayError(400, "id must be a string", param="id")
    if requested.startswith("job_"):
        raise GatewayError(400, "ids starting with 'job_' are reserved for ids the gateway generates", param="id")
    limit = 127 - len(tenant)
    if not _CLIENT_ID.match(requested) or len(requested) > limit:
        raise GatewayError(
            400,
            f"id must be 1-{limit} letters, digits, '_', '.', ':' or '-', starting with a letter or digit",
            param="id",
        )
    return f"{tenant}:{requested}"


def _links(job_id: str) -> dict[str, str]:
    base = f"/v1/jobs/{job_id}"
    return {"self": base, "events": f"{base}/events", "cancel": f"{base}/cancel"}


async def _lookup(request: Request) -> tuple[str, dict[str, str]]:
    tenant: str = request.state.tenant
    path_id: str = request.path_params["job_id"]
    job_id = resolve_id(tenant, path_id)
    meta = await gateway_of(request).client.status(job_id) if ANY_ID.match(job_id) else None
    if not meta or meta.get("tenant") != tenant:
        raise GatewayError(404, f"No job with id {path_id!r}.", code="job_not_found")
    return job_id, meta


async def submit_job(request: Request) -> Response:
    gw = gateway_of(request)
    tenant: str = request.state.tenant
    data: dict[str, Any] = await read_json_object(request, gw.settings.max_body_bytes)
    if data.get("tenant", tenant) != tenant:
        raise GatewayError(403, "The tenant is set by your API key: omit 'tenant' or send your own.", param="tenant")
    for field in ("reply_to", "submitted_at"):
        if field in data:
            raise GatewayError(400, f"{field!r} cannot be set through the gateway", param=field)
    job_id = storage_id(tenant, data.pop("id", None))
    if job_id is not None:
        data["id"] = job_id
    data["tenant"] = tenant
    data.update(scheduling_fields(request.headers, data, None))
    data.update(incoming_trace(request.headers))  # continue the caller's trace
    with_header_tags(data, request.headers)
    try:
        handle = await gw.client.submit(data)
    except InvalidJobError as exc:
        raise problems_error(exc.errors, "job") from None
    if handle.enqueued:
        gw.metrics.jobs_submitted.labels("jobs").inc()
    body = {
        "id": handle.id,
        "object": "llmq.job",
        "enqueued": handle.enqueued,
        "status": "queued" if handle.enqueued else None,
        "links": _links(handle.id),
    }
    if not handle.enqueued:
        meta = await gw.client.status(handle.id) or {}
        body["status"] = meta.get("state")
    headers = {"location": f"/v1/jobs/{handle.id}"}
    return JSONResponse(body, status_code=202 if handle.enqueued else 200, headers=headers)


async def get_job(request: Request) -> Response:
    """The job's state and result while they are kept (``LLMQ_RESULT_TTL_S``), and its history
    summary (attempts, cost, error, replay links) for ``LLMQ_HISTORY_DAYS`` once it ended."""
    gw = gateway_of(request)
    path_id: str = request.path_params["job_id"]
    job_id = resolve_id(request.state.tenant, path_id)
    known = bool(ANY_ID.match(job_id))
    meta = await gw.client.status(job_id) if known else None
    if meta is not None and meta.get("tenant") != request.state.tenant:
        meta = None
    entry = await own_entry(request, job_id) if known else None
    if meta is None and entry is None:
        raise GatewayError(404, f"No job with id {path_id!r}.", code="job_not_found")
    clean = scrub_result(await gw.client.get_result(job_id)) if meta is not None else None
    if not _with_text(request):
        clean = strip_result_text(clean)
    summary = entry.summary if entry is not None else None
    meta = meta or {}
    submitted = meta.get("submitted_at")
    return JSONResponse(
        {
            "id": job_id,
            "object": "llmq.job",
            "status": meta.get("state") or (summary.status if summary else None),
            "submitted_at": float(submitted) if submitted else (summary.submitted_at if summary else None),
            "runs": int(meta.get("runs", 0)) or (summary.run if summary else 0),
            "result": clean.model_dump(mode="json") if clean is not None else None,
            "history": entry_json(entry) if entry is not None else None,
            "webhook": await gw.history.delivery(job_id),
            "links": _links(job_id),
        }
    )


async def cancel_job(request: Request) -> Response:
    job_id, _ = await _lookup(request)
    accepted = await gateway_of(request).client.cancel(job_id)
    return JSONResponse({"id": job_id, "object": "llmq.job.cancel", "cancel_requested": accepted})


def _with_text(request: Request) -> bool:
    """``?text=0`` leaves message text out (deltas, the answer, tool arguments): the browser view."""
    return request.query_params.get("text", "1") not in ("0", "false")


def _resume_from(request: Request) -> int:
    """The first seq to send: after ``Last-Event-ID`` (a reconnecting EventSource), or ``?from_seq``."""
    last = request.headers.get("last-event-id")
    raw = request.query_params.get("from_seq")
    try:
        if last not in (None, ""):
            value = int(last) + 1
        else:
            value = int(raw) if raw is not None else 0
    except ValueError:
        raise GatewayError(400, "Last-Event-ID and from_seq must be integers", param="from_seq") from None
    if value < 0:
        raise GatewayError(400, "Last-Event-ID and from_seq must not be negative", param="from_seq")
    return value


async def _ended_before(redis: Any, job_id: str, from_seq: int) -> bool:
    """Whether the job's last event is terminal with a seq below ``from_seq`` (a resume past the end)."""
    for _, fields in await redis.xrevrange(JobKeys(job_id).events, count=1) or ():
        if fields is not None:
            event = parse_event(fields[b"e"])
            return event.type in TERMINAL_EVENT_TYPES and event.seq < from_seq
    return False


async def job_events(request: Request) -> EventStreamResponse | Response:
    gw = gateway_of(request)
    job_id, _ = await _lookup(request)
    from_seq = _resume_from(request)
    if from_seq > 0 and await _ended_before(gw.client.redis, job_id, from_seq):
        # nothing will come: 204, which also tells an EventSource to stop reconnecting (waiting would
        # hold the connection open for good; the terminal event again would loop an EventSource)
        return Response(status_code=204, headers={"x-llmq-job-id": job_id, "x-llmq-ended": "1"})
    choice = request.query_params.get("on_disconnect", gw.settings.events_on_disconnect)
    policy: OnDisconnect
    if choice == "cancel":
        policy = "cancel"
    elif choice == "finish":
        policy = "finish"
    else:
        raise GatewayError(400, "on_disconnect must be 'cancel' or 'finish'", param="on_disconnect")

    async def gone(reason: str) -> None:
        await gw.client_gone(job_id, policy, reason)

    s = gw.settings
    return EventStreamResponse(
        gw.feed(job_id, from_seq=from_seq),
        JobEventsRenderer(None if _with_text(request) else strip_text),
        metrics=gw.metrics,
        heartbeat_s=s.heartbeat_s,
        write_timeout_s=s.write_timeout_s,
        on_client_gone=gone,
        headers={"x-llmq-job-id": job_id},
    )

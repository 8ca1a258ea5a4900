"""``POST /v1/chat/completions``: an OpenAI chat completion run as a queued job.

Streaming: the job's events become ``chat.completion.chunk`` frames through the same bounded,
deadline-guarded SSE path as ``/v1/jobs/{id}/events``. The response headers wait for the first
content (or ``hold_headers_s``), so a job that fails before producing anything is an HTTP error
status the SDK raises as usual (``RateLimitError``, ``NotFoundError``, ...).

Not streaming: the handler waits for the terminal event while listening for ``http.disconnect``.

Either way the request owns its job: when the client goes away first, the job is cancelled
(``on_disconnect = "cancel"``, the default), which makes the worker abort its provider call.
The job id is in the ``x-llmq-job-id`` response header (``GET /v1/jobs/{id}`` shows the result).
"""

from __future__ import annotations

import asyncio
import time

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Receive

from producers.client import InvalidJobError
from producers.gateway.body import problems_error, read_json_object
from producers.gateway.errors import GatewayError, error_for_job, feed_error
from producers.gateway.feed import FeedError, JobFeed
from producers.gateway.models import model_not_found
from producers.gateway.openai_compat import (
    ChatStreamRenderer,
    completion_body,
    is_structured,
    parse_request,
    to_job,
)
from producers.gateway.priority import scheduling_fields
from producers.gateway.sse import EventStreamResponse, Item, is_last
from producers.gateway.state import gateway_of
from producers.gateway.tags import with_header_tags
from producers.tracing import incoming_trace

__all__ = ["chat_completions"]

#: Refusals of the requested model itself (``producers/catalog.py``).
_UNKNOWN = ("unknown_model", "unknown_provider", "unpriced_model")


async def _until_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _terminal(feed: JobFeed) -> Item:
    while True:
        item = await feed.queue.get()
        if is_last(item):
            return item


async def wait_for_terminal(feed: JobFeed, receive: Receive, timeout: float) -> Item | None:
    """The job's terminal event; None when the client disconnected first; TimeoutError after ``timeout``."""
    tasks = {
        "feed": asyncio.create_task(feed.run()),
        "terminal": asyncio.create_task(_terminal(feed)),
        "gone": asyncio.create_task(_until_disconnect(receive)),
    }
    try:
        done, _ = await asyncio.wait(
            {tasks["terminal"], tasks["gone"]}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
        )
    finally:
        for task in tasks.values():
            task.cancel()
        await asyncio.gather(*tasks.values(), return_exceptions=True)
    if tasks["terminal"] in done:
        return tasks["terminal"].result()
    if tasks["gone"] in done:
        return None
    raise TimeoutError


async def chat_completions(request: Request) -> Response | EventStreamResponse:
    gw = gateway_of(request)
    settings = gw.settings
    tenant: str = request.state.tenant
    req = parse_request(await read_json_object(request, settings.max_body_bytes))
    try:
        job = with_header_tags(to_job(req, tenant=tenant), request.headers)
        job.update(scheduling_fields(request.headers, job, "interactive"))
        handle = await gw.client.submit(job, **incoming_trace(request.headers))
    except InvalidJobError as exc:
        unknown = [e for e in exc.errors if e.get("type") in _UNKNOWN and tuple(e.get("loc", ())) == ("model",)]
        if unknown:  # as OpenAI answers a model it does not have: 404, code model_not_found
            raise model_not_found(unknown[0]["msg"]) from None
        raise problems_error(exc.errors) from None
    job_id = handle.id
    gw.metrics.jobs_submitted.labels("chat").inc()
    headers = {"x-llmq-job-id": job_id}
    created = int(time.time())

    if req.stream:

        async def gone(reason: str) -> None:
            await gw.client_gone(job_id, settings.on_disconnect, reason)

        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        return EventStreamResponse(
            gw.feed(job_id, needs_worker=True),
            ChatStreamRenderer(
                job_id, model=req.model, include_usage=include_usage, created=created, hold_content=is_structured(req)
            ),
            metrics=gw.metrics,
            heartbeat_s=settings.heartbeat_s,
            write_timeout_s=settings.write_timeout_s,
            hold_headers_s=settings.hold_headers_s,
            on_client_gone=gone,
            headers=headers,
        )

    try:
        feed = gw.feed(job_id, skip_deltas=True, needs_worker=True)
        item = await wait_for_terminal(feed, request.receive, settings.result_timeout_s)
    except TimeoutError:
        await gw.client_gone(job_id, "cancel", "timeout")
        raise GatewayError(
            504,
            f"The job did not finish within {settings.result_timeout_s:g}s; it was cancelled.",
            code="timeout",
            headers=dict(headers),
        ) from None
    if item is None:
        await gw.client_gone(job_id, settings.on_disconnect, "client_gone")
        return Response(status_code=499)
    if isinstance(item, FeedError):
        err = feed_error(item)
        err.headers.update(headers)
        raise err
    if item.type == "done":
        body = completion_body(item.result, model=req.model, created=created)
        if item.result.cached:  # served by the response cache (or an identical call in flight)
            headers["x-llmq-cached"] = "true"
        return JSONResponse(body, headers=headers)
    if item.type == "error":
        err = error_for_job(item.error, job_id)
    else:
        err = GatewayError(499, "the job was cancelled", type="cancelled", code="cancelled")
    err.headers.update(headers)
    raise err

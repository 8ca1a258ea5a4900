"""Server-Sent Events with backpressure: a bounded queue, a per-write deadline, disconnect detection.

One response = three tasks, raced like starlette's ``StreamingResponse`` races its body against
``http.disconnect``:

* the **feed** (:class:`~producers.gateway.feed.JobFeed`) fills a bounded queue (16 events) from
  Redis, falling back to the replay Stream when the client is behind;
* the **writer** drains the queue, one ``send`` per batch of ready events (each event is flushed
  as soon as it is ready: nothing is held back to fill a batch), with a deadline on every
  ``send``: uvicorn only returns from ``send`` once its write buffer is below the high-water mark,
  so a client that stops reading stalls the send, and after ``write_timeout_s`` it is dropped;
  while idle it writes an SSE comment every ``heartbeat_s``;
* the **listener** waits for ``http.disconnect``, so a client that goes away is noticed at once,
  even while the job is silent.

Whichever of writer and listener ends first ends the response; a client that left (or was
dropped) before the terminal event triggers ``on_client_gone`` (the caller cancels the job).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from producers.gateway.errors import scrub_event
from producers.gateway.feed import FeedError, JobFeed
from producers.gateway.metrics import GatewayMetrics
from workers.contract import TERMINAL_EVENT_TYPES, StreamEvent

__all__ = ["SSE_HEADERS", "EventStreamResponse", "JobEventsRenderer", "Renderer", "SSEParser", "sse_frame"]

log = logging.getLogger("llmq.gateway")

#: ``X-Accel-Buffering: no`` stops nginx from buffering the whole response (notes §5).
SSE_HEADERS = {
    "content-type": "text/event-stream; charset=utf-8",
    "cache-control": "no-cache",
    "x-accel-buffering": "no",
}
HEARTBEAT = b": ping\n\n"
#: Ready events written together in one ``send`` at most.
_MAX_BATCH = 64

Item = StreamEvent | FeedError


def sse_frame(data: str | bytes, *, event: str | None = None, id: int | None = None) -> bytes:
    head = b""
    if id is not None:
        head += b"id: %d\n" % id
    if event is not None:
        head += b"event: " + event.encode() + b"\n"
    body = data.encode() if isinstance(data, str) else data
    return head + b"data: " + body + b"\n\n"


def is_last(item: Item) -> bool:
    return isinstance(item, FeedError) or item.type in TERMINAL_EVENT_TYPES


class Renderer(Protocol):
    #: Sent right after the headers.
    prelude: bytes

    def frames(self, item: Item) -> bytes: ...

    def early_response(self, item: Item) -> Response | None:
        """A plain HTTP response instead of the stream (only asked while headers are held)."""
        ...


class JobEventsRenderer:
    """``GET /v1/jobs/{id}/events``: every event as JSON, ``id:`` = seq, ``event:`` = its type."""

    prelude = b"retry: 2000\n\n"

    def __init__(self, transform: Callable[[StreamEvent], StreamEvent] | None = None) -> None:
        #: Applied to every event after the scrubbing (the browser view's ``?text=0`` strips message text).
        self._transform = transform

    def frames(self, item: Item) -> bytes:
        if isinstance(item, FeedError):
            return sse_frame(json.dumps({"type": "gateway_error", "message": item.message}), event="gateway_error")
        event = scrub_event(item)
        if self._transform is not None:
            event = self._transform(event)
        return sse_frame(event.model_dump_json(), event=item.type, id=item.seq)

    def early_response(self, item: Item) -> Response | None:
        return None


class _WriteTimeoutError(Exception):
    pass


async def _until_disconnect(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


class EventStreamResponse:
    def __init__(
        self,
        feed: JobFeed,
        renderer: Renderer,
        *,
        metrics: GatewayMetrics,
        heartbeat_s: float,
        write_timeout_s: float,
        hold_headers_s: float = 0.0,
        on_client_gone: Callable[[str], Awaitable[None]] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.feed = feed
        self.renderer = renderer
        self.metrics = metrics
        self.heartbeat_s = heartbeat_s
        self.write_timeout_s = write_timeout_s
        self.hold_headers_s = hold_headers_s
        self.on_client_gone = on_client_gone
        self.headers = [(k.encode(), v.encode()) for k, v in {**SSE_HEADERS, **(headers or {})}.items()]
        #: True once the terminal event (or an early error response) went out.
        self.delivered = False
        #: finished | client_gone | write_timeout | error
        self.ended: str | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        feed_task = asyncio.create_task(self.feed.run())
        listener = asyncio.create_task(_until_disconnect(receive))
        writer = asyncio.create_task(self._write(scope, receive, send))
        metrics = self.metrics
        metrics.sse_open.inc()
        reason = "error"
        try:
            done, _ = await asyncio.wait({writer, listener}, return_when=asyncio.FIRST_COMPLETED)
            if writer in done:
                exc = writer.exception()
                if exc is None:
                    reason = "finished"
                elif isinstance(exc, _WriteTimeoutError):
                    reason = "write_timeout"
                    log.warning(
                        "dropping the SSE client of job %s: no write progress for %gs",
                        self.feed.keys.job_id,
                        self.write_timeout_s,
                    )
                else:
                    log.error("SSE stream of job %s failed", self.feed.keys.job_id, exc_info=exc)
            else:
                reason = "client_gone"
        finally:
            for task in (writer, listener, feed_task):
                task.cancel()
            await asyncio.gather(writer, listener, feed_task, return_exceptions=True)
            metrics.sse_open.dec()
            metrics.sse_ended.labels(reason).inc()
            self.ended = reason
        if reason in ("client_gone", "write_timeout") and not self.delivered and self.on_client_gone is not None:
            await self.on_client_gone(reason)

    # --- writer -------------------------------------------------------------------------------------

    async def _send(self, send: Send, message: dict[str, Any]) -> None:
        try:
            async with asyncio.timeout(self.write_timeout_s):
                await send(message)
        except TimeoutError:
            raise _WriteTimeoutError from None

    async def _body(self, send: Send, body: bytes, more: bool = True) -> None:
        await self._send(send, {"type": "http.response.body", "body": body, "more_body": more})

    async def _hold(self, scope: Scope, receive: Receive, send: Send) -> list[Item] | None:
        """Wait for the first non-``start`` event before answering; None if an error response went out."""
        held: list[Item] = []
        queue = self.feed.queue
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.hold_headers_s):
                while True:
                    item = await queue.get()
                    held.append(item)
                    if isinstance(item, FeedError) or item.type != "start":
                        break
        if held:
            early = self.renderer.early_response(held[-1])
            if early is not None:
                try:
                    async with asyncio.timeout(self.write_timeout_s):
                        await early(scope, receive, send)
                except TimeoutError:
                    raise _WriteTimeoutError from None
                self.delivered = True
                return None
        return held

    async def _write(self, scope: Scope, receive: Receive, send: Send) -> None:
        held: list[Item] = []
        if self.hold_headers_s > 0:
            maybe = await self._hold(scope, receive, send)
            if maybe is None:
                return
            held = maybe
        render = self.renderer.frames
        await self._send(send, {"type": "http.response.start", "status": 200, "headers": self.headers})
        first = self.renderer.prelude + b"".join(render(item) for item in held)
        if held and is_last(held[-1]):
            await self._body(send, first, more=False)
            self.delivered = True
            return
        if first:
            await self._body(send, first)
        queue = self.feed.queue
        depth = self.metrics.sse_queue_depth
        while True:
            if queue.empty():
                try:
                    async with asyncio.timeout(self.heartbeat_s):
                        item = await queue.get()
                except TimeoutError:
                    await self._body(send, HEARTBEAT)
                    continue
                depth.observe(0)
            else:
                depth.observe(queue.qsize())
                item = queue.get_nowait()
            parts = [render(item)]
            last = is_last(item)
            while not last and len(parts) < _MAX_BATCH and not queue.empty():
                item = queue.get_nowait()
                parts.append(render(item))
                last = is_last(item)
            await self._body(send, b"".join(parts), more=not last)
            if last:
                self.delivered = True
                return


class SSEParser:
    """Client side: feed bytes, get ``(id, event, data)`` for every complete event (tests, benchmarks)."""

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, chunk: bytes) -> list[tuple[str | None, str | None, str]]:
        self._buffer += chunk.replace(b"\r\n", b"\n")
        events = []
        while b"\n\n" in self._buffer:
            block, self._buffer = self._buffer.split(b"\n\n", 1)
            id_ = event = None
            data: list[str] = []
            for line in block.decode().split("\n"):
                name, _, value = line.partition(":")
                value = value.removeprefix(" ")
                if name == "id":
                    id_ = value
                elif name == "event":
                    event = value
                elif name == "data":
                    data.append(value)
            if data:
                events.append((id_, event, "\n".join(data)))
        return events

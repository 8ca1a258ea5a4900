"""A small asyncio HTTP/1.1 server with exactly the control a fault-injecting upstream needs.

Generic frameworks hide the transport; the simulator must be able to cut a chunked body without
its terminator, stall mid-stream, or write a malformed line, byte for byte. Keep-alive and
``Content-Length`` request bodies are supported; that is all LLM clients send.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

__all__ = ["HTTPServer", "Request", "Responder"]

_REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    413: "Payload Too Large",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    529: "Overloaded",
}
MAX_BODY = 32 * 1024 * 1024


@dataclass(slots=True)
class Request:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> object:
        return json.loads(self.body or b"null")


@dataclass(slots=True)
class Responder:
    """Writes one response. Use :meth:`send` for a whole body or :meth:`start_stream` + chunks."""

    writer: asyncio.StreamWriter
    keep_alive: bool = True
    started: bool = False
    aborted: bool = False
    extra_headers: list[tuple[str, str]] = field(default_factory=list)

    def _head(self, status: int, headers: list[tuple[str, str]]) -> bytes:
        lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}"]
        lines.extend(f"{k}: {v}" for k, v in [*headers, *self.extra_headers])
        if not self.keep_alive:
            lines.append("connection: close")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    async def send(self, status: int, body: bytes, content_type: str = "application/json", headers=()) -> None:
        self.started = True
        hdrs = [("content-type", content_type), ("content-length", str(len(body))), *headers]
        self.writer.write(self._head(status, hdrs) + body)
        await self.writer.drain()

    async def send_json(self, status: int, payload: object, headers=()) -> None:
        await self.send(status, json.dumps(payload).encode(), headers=headers)

    async def start_stream(self, content_type: str, status: int = 200, headers=()) -> None:
        self.started = True
        hdrs = [("content-type", content_type), ("transfer-encoding", "chunked"), ("cache-control", "no-cache")]
        self.writer.write(self._head(status, [*hdrs, *headers]))

    def write_chunk(self, data: bytes) -> None:
        if data:
            self.writer.write(b"%x\r\n%s\r\n" % (len(data), data))

    async def flush(self) -> None:
        await self.writer.drain()

    async def end_stream(self) -> None:
        self.writer.write(b"0\r\n\r\n")
        await self.writer.drain()

    def abort(self) -> None:
        """Close the connection right now: no chunk terminator, no more bytes."""
        self.aborted = True
        self.keep_alive = False
        with contextlib.suppress(Exception):
            self.writer.transport.abort()


Handler = Callable[[Request, Responder], Awaitable[None]]


class HTTPServer:
    def __init__(self, handler: Handler, host: str = "127.0.0.1", port: int = 0) -> None:
        self._handler = handler
        self.host = host
        self.port = port
        self._server: asyncio.base_events.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, self.port, backlog=4096, limit=2**20)
        self.port = self._server.sockets[0].getsockname()[1]

    async def serve_forever(self) -> None:
        if self._server is None:
            await self.start()
        assert self._server is not None
        async with self._server:
            await self._server.serve_forever()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                request = await _read_request(reader)
                if request is None:
                    break
                keep_alive = request.headers.get("connection", "").lower() != "close"
                responder = Responder(writer, keep_alive=keep_alive)
                try:
                    await self._handler(request, responder)
                except (ConnectionError, asyncio.IncompleteReadError):
                    break
                except Exception as exc:  # a bug in a handler must not kill the server
                    if not responder.started:
                        await responder.send_json(500, {"error": {"message": f"simulator bug: {exc!r}"}})
                    else:
                        responder.abort()
                if not responder.keep_alive or responder.aborted:
                    break
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()


async def _read_request(reader: asyncio.StreamReader) -> Request | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    lines = head.decode("latin-1").split("\r\n")
    method, target, _ = lines[0].split(" ", 2)
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length") or 0)
    if length > MAX_BODY:
        raise ValueError("body too large")
    body = await reader.readexactly(length) if length else b""
    path, _, query = target.partition("?")
    return Request(method=method, path=path, query=query, headers=headers, body=body)

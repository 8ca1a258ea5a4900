"""A small asyncio HTTP/1.1 server with exactly the control a fault-injecting upstream needs.

Generic frameworks hide the transport; the simulator must be able to cut a chunked body without
its terminator, stall mid-stream, or write a malformed line, byte for byte. Keep-alive and
``Content-Length`` request bodies are supported; that is all LLM clients send.

When the client goes away (EOF or a reset) while a handler runs, the handler's task is cancelled
at once, so a stalled or paced stream notices a disconnect without writing, and the simulator can
record when the client closed it. Handlers see that as :class:`asyncio.CancelledError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

__all__ = ["HTTPServer", "Request", "Responder"]

_REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    409: "Conflict",
    413: "Payload Too Large",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
    529: "Overloaded",
}
MAX_BODY = 32 * 1024 * 1024
_TERMINATOR = b"0\r\n\r\n"

Headers = Iterable[tuple[str, str]]


@dataclass(slots=True)
class Request:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> object:
        return json.loads(self.body or b"null")

    def query_params(self) -> dict[str, str]:
        from urllib.parse import parse_qsl

        return dict(parse_qsl(self.query))


class _Connection(asyncio.StreamReaderProtocol):
    """Stream protocol that cancels the serving task when the peer goes away."""

    task: asyncio.Task[None] | None = None
    #: Set when the server itself closes the connection (cut, abort): no cancellation then.
    closing: bool = False

    def _gone(self) -> None:
        task, self.task = self.task, None
        if task is not None and not self.closing and not task.done():
            task.cancel()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self._gone()

    def eof_received(self) -> bool:
        # HTTP clients never half-close to end a request, so EOF means the client left.
        super().eof_received()
        self._gone()
        return False


class Responder:
    """Writes one response: :meth:`send` for a whole body, or :meth:`start_stream` + chunks."""

    __slots__ = ("_conn", "_write", "aborted", "keep_alive", "started", "writer")

    def __init__(self, writer: asyncio.StreamWriter, keep_alive: bool = True) -> None:
        self.writer = writer
        self._write = writer.write
        self._conn: _Connection | None = None
        self.keep_alive = keep_alive
        self.started = False
        self.aborted = False

    def _head(self, status: int, headers: Headers) -> bytes:
        lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}"]
        lines.extend(f"{k}: {v}" for k, v in headers)
        if not self.keep_alive:
            lines.append("connection: close")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    async def send(
        self, status: int, body: bytes, content_type: str = "application/json", headers: Headers = ()
    ) -> None:
        self.started = True
        hdrs = [("content-type", content_type), ("content-length", str(len(body))), *headers]
        self._write(self._head(status, hdrs) + body)
        await self.writer.drain()

    async def send_json(self, status: int, payload: object, headers: Headers = ()) -> None:
        await self.send(status, json.dumps(payload).encode(), headers=headers)

    async def send_partial(self, status: int, body: bytes, upto: int, content_type: str, headers: Headers) -> None:
        """Announce the whole body's length, send only ``body[:upto]`` and close the connection."""
        self.started = True
        hdrs = [("content-type", content_type), ("content-length", str(len(body))), *headers]
        self._write(self._head(status, hdrs) + body[:upto])
        await self.writer.drain()
        self.cut()

    def start_stream(
        self, content_type: str, status: int = 200, headers: Headers = (), first: bytes = b"", last: bool = False
    ) -> None:
        """Write the response head (chunked) and, in the same write, a first chunk (and the terminator)."""
        self.started = True
        hdrs = [("content-type", content_type), ("transfer-encoding", "chunked"), ("cache-control", "no-cache")]
        head = self._head(status, [*hdrs, *headers])
        if first:
            head += b"%x\r\n%s\r\n" % (len(first), first)
        self._write(head + _TERMINATOR if last else head)

    def write_chunk(self, data: bytes) -> None:
        if data:
            self._write(b"%x\r\n%s\r\n" % (len(data), data))

    def write_last(self, data: bytes) -> None:
        """A final chunk and the chunked terminator in one write."""
        self._write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(data), data) if data else _TERMINATOR)

    async def flush(self) -> None:
        await self.writer.drain()

    async def end_stream(self, data: bytes = b"") -> None:
        self.write_last(data)
        await self.writer.drain()

    def _mark_closing(self) -> None:
        self.keep_alive = False
        if self._conn is not None:
            self._conn.closing = True

    def cut(self) -> None:
        """Close the connection after the bytes already written: no chunk terminator follows."""
        self.aborted = True
        self._mark_closing()
        with contextlib.suppress(Exception):
            self.writer.close()

    def abort(self) -> None:
        """Reset the connection right now, discarding anything not yet sent."""
        self.aborted = True
        self._mark_closing()
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
        loop = asyncio.get_running_loop()

        def factory() -> _Connection:
            reader = asyncio.StreamReader(limit=2**20, loop=loop)
            return _Connection(reader, self._serve, loop=loop)

        self._server = await loop.create_server(factory, self.host, self.port, backlog=4096)
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
        protocol = writer.transport.get_protocol()
        conn = protocol if isinstance(protocol, _Connection) else None  # only our factory creates them
        if conn is not None:
            conn.task = asyncio.current_task()
        try:
            while True:
                request = await _read_request(reader)
                if request is None:
                    break
                keep_alive = request.headers.get("connection", "").lower() != "close"
                responder = Responder(writer, keep_alive=keep_alive)
                responder._conn = conn
                try:
                    await self._handler(request, responder)
                except (ConnectionError, asyncio.IncompleteReadError):
                    break
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # a bug in a handler must not kill the server
                    if not responder.started:
                        await responder.send_json(500, {"error": {"message": f"simulator bug: {exc!r}"}})
                    else:
                        responder.abort()
                if not responder.keep_alive or responder.aborted:
                    break
        except asyncio.CancelledError:
            pass  # the client went away (see _Connection) or the server is shutting down
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            pass
        finally:
            if conn is not None:
                conn.closing = True
                conn.task = None
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

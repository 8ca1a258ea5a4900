"""A tiny HTTP/1.1 server on 127.0.0.1 that replays canned responses byte for byte.

Test helper (not collected): each reply is registered under a key and served at
``http://127.0.0.1:<port>/<key>/...``; the status line, headers (case, order and duplicates as
given) and body are written exactly as given. A reply without a ``Content-Length`` is sent with
chunked framing, cut into irregular pieces so that parsers see lines and UTF-8 sequences split
across reads. Requests are recorded per key. Extra behaviours for tests of failure paths:
``cut`` (drop the connection before the body is complete), ``stall`` (send the body, then
go silent without finishing it) and ``endless`` (keep sending ``endless`` until the client goes
away, then set ``disconnected``).
"""

from __future__ import annotations

import contextlib
import http
import os
import socketserver
import threading
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field

from workers.llm.httpclient import HTTPClient, HTTPSettings

__all__ = ["CapturedRequest", "ReplayServer", "Reply", "local_client"]

#: Piece sizes used, in turn, to cut a chunked body: small and odd on purpose.
PIECES = (1, 7, 61, 3, 200, 13, 1024)


@dataclass(slots=True)
class Reply:
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    #: Close the connection after this many body bytes, without finishing the framing.
    cut: int | None = None
    #: Chunk repeated (every 5 ms) after ``body`` until the client disconnects.
    endless: bytes | None = None
    #: After the body, keep the connection open and silent (until the server stops).
    stall: bool = False
    disconnected: threading.Event = field(default_factory=threading.Event)


@dataclass(slots=True)
class CapturedRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


def _reason(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


class _Handler(socketserver.StreamRequestHandler):
    server: _Server

    def handle(self) -> None:
        self.request.settimeout(10)
        try:
            while self._one():
                pass
        except OSError:
            pass  # the client went away between requests (closed an unfinished response)

    def _one(self) -> bool:
        line = self.rfile.readline(65537)
        if not line.strip():
            return False
        method, target, _ = line.decode("latin-1").split(" ", 2)
        headers: dict[str, str] = {}
        while True:
            raw = self.rfile.readline(65537)
            if raw in (b"\r\n", b"\n", b""):
                break
            name, _, value = raw.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        body = self.rfile.read(int(headers.get("content-length") or 0))
        key, _, rest = target.lstrip("/").partition("/")
        owner = self.server.owner
        owner.requests[key].append(CapturedRequest(method, "/" + rest, headers, body))
        queued = owner.sequences.get(key)
        reply = (queued.pop(0) if len(queued) > 1 else queued[0]) if queued else owner.replies.get(key)
        if reply is None:
            reply = Reply(404, [("Content-Length", "0")], b"")
        try:
            return self._send(reply)
        except OSError:
            reply.disconnected.set()
            return False

    def _send(self, reply: Reply) -> bool:
        lines = [f"HTTP/1.1 {reply.status} {_reason(reply.status)}"]
        lines += [f"{name}: {value}" for name, value in reply.headers]
        framed = any(name.lower() == "content-length" for name, _ in reply.headers)
        if not framed:
            lines.append("Transfer-Encoding: chunked")
        self.wfile.write(("\r\n".join(lines) + "\r\n\r\n").encode("utf-8"))
        body = reply.body if reply.cut is None else reply.body[: reply.cut]
        if framed:
            self.wfile.write(body)
        else:
            pos, turn = 0, 0
            while pos < len(body):
                piece = body[pos : pos + PIECES[turn % len(PIECES)]]
                pos, turn = pos + len(piece), turn + 1
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                self.wfile.flush()
        self.wfile.flush()
        if reply.endless is not None:
            while not self.server.stopping.is_set():
                self.wfile.write(b"%x\r\n%s\r\n" % (len(reply.endless), reply.endless))
                self.wfile.flush()
                self.server.stopping.wait(0.005)
            return False
        if reply.stall:
            self.server.stopping.wait(30)
            return False
        if reply.cut is not None:
            return False  # connection dropped mid-body
        if not framed:
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        return True


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, owner: ReplayServer) -> None:
        self.owner = owner
        self.stopping = threading.Event()
        super().__init__(("127.0.0.1", 0), _Handler)


class ReplayServer:
    """Start with ``with ReplayServer() as server``; register replies with :meth:`add`."""

    def __init__(self) -> None:
        self.replies: dict[str, Reply] = {}
        #: Replies served in turn under one key (the last one again once the others were used).
        self.sequences: dict[str, list[Reply]] = {}
        self.requests: defaultdict[str, list[CapturedRequest]] = defaultdict(list)
        self._server = _Server(self)
        self._thread = threading.Thread(target=self._server.serve_forever, name="replay-server", daemon=True)

    @property
    def origin(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def add(self, key: str, reply: Reply) -> str:
        """Serve ``reply`` under ``key``; returns the base URL ``http://127.0.0.1:<port>/<key>``."""
        assert "/" not in key
        self.replies[key] = reply
        self.requests.pop(key, None)
        return f"{self.origin}/{key}"

    def add_sequence(self, key: str, replies: list[Reply]) -> str:
        """Serve ``replies`` one per request under ``key`` (a multi-turn exchange); the base URL."""
        assert "/" not in key and replies
        self.sequences[key] = list(replies)
        self.requests.pop(key, None)
        return f"{self.origin}/{key}"

    def __enter__(self) -> ReplayServer:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._server.stopping.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


@contextlib.contextmanager
def local_client(read_timeout: float = 10.0) -> Iterator[HTTPClient]:
    """Our HTTP client as a worker builds it (small pool), never routed through a proxy."""
    saved = os.environ.get("NO_PROXY")
    os.environ["NO_PROXY"] = "127.0.0.1,localhost"
    try:  # the client reads proxy settings when it is built
        client = HTTPClient(HTTPSettings(max_connections=8, connect_timeout=2.0, read_timeout=read_timeout))
    finally:
        if saved is None:
            del os.environ["NO_PROXY"]
        else:
            os.environ["NO_PROXY"] = saved
    try:
        yield client
    finally:
        client.close()

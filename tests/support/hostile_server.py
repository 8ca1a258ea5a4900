"""A real HTTP server that misbehaves on purpose: endless lines, endless streams, trickled bodies.

Each request's behaviour comes from the path's last segment's query (``?mode=...``) or from the
server's ``mode`` attribute; it answers every POST (``/v1/chat/completions``, ``/v1/messages``,
``/api/chat``) the same way, so every provider can be pointed at it. It writes until the client
goes away, and counts how many responses were abandoned by the client (``hangups``).
"""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType

__all__ = ["HostileServer"]

_OPENAI_DELTA = b'data: {"id":"c","model":"m","choices":[{"index":0,"delta":{"content":"ha"}}]}\n\n'
_ANTHROPIC_DELTA = (
    b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
    b'"delta":{"type":"text_delta","text":"ha"}}\n\n'
)
_OLLAMA_DELTA = b'{"model":"m","message":{"role":"assistant","content":"ha"},"done":false}\n'


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.0"  # close-delimited bodies: no length, no chunking

    def log_message(self, format: str, *args: object) -> None:  # quiet
        pass

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        self.rfile.read(length)
        mode = self.server.mode
        self.send_response(200)
        self.send_header("content-type", "application/json" if mode == "endless_body" else "text/event-stream")
        self.end_headers()
        try:
            if mode == "endless_line":  # one line that never ends
                self.wfile.write(b"data: " if not self.path.endswith("/api/chat") else b'{"message":')
                while True:
                    self.wfile.write(b"x" * 65536)
            elif mode == "endless_body":  # a whole-body answer that never ends
                self.wfile.write(b'{"choices":[{"message":{"content":"')
                while True:
                    self.wfile.write(b"y" * 65536)
            elif mode == "endless_stream":  # valid deltas forever, as fast as they are read
                delta = self._delta()
                while True:
                    self.wfile.write(delta * 256)
            elif mode == "trickle":  # valid deltas forever, each well inside the read timeout
                delta = self._delta()
                while True:
                    self.wfile.write(delta)
                    self.wfile.flush()
                    time.sleep(0.02)
        except (TimeoutError, BrokenPipeError, ConnectionResetError, OSError):
            with self.server.lock:
                self.server.hangups += 1

    def _delta(self) -> bytes:
        if self.path.endswith("/v1/messages"):
            start = (
                b'event: message_start\ndata: {"type":"message_start","message":{"id":"m","model":"m","usage":{}}}\n\n'
            )
            self.wfile.write(start)
            return _ANTHROPIC_DELTA
        if self.path.endswith("/api/chat"):
            return _OLLAMA_DELTA
        return _OPENAI_DELTA


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    mode = "endless_line"
    hangups = 0
    lock = threading.Lock()


class HostileServer:
    def __init__(self) -> None:
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.lock = threading.Lock()
        self._thread = threading.Thread(target=self._server.serve_forever, name="hostile-http", daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def mode(self) -> str:
        return self._server.mode

    @mode.setter
    def mode(self, value: str) -> None:
        self._server.mode = value

    def hangups(self) -> int:
        with self._server.lock:
            return self._server.hangups

    def __enter__(self) -> HostileServer:
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

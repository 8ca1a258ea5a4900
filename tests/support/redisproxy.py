"""TCP proxies in front of a real Redis, for what a test cannot make a real Redis do on cue.

* :class:`VersionProxy` reports another server version: how a test presents an old Redis (one without
  ``BLMOVE``) without running one. Everything is forwarded byte for byte, except that
  ``redis_version:<real>`` in the server's replies (``INFO``) becomes ``redis_version:<fake>`` of the
  same length, so the RESP lengths stay right.
* :class:`ReplyCutProxy` lets Redis run a command and loses its reply: the connection drops between
  the two, as when Redis restarts or the network fails right after a write (a client cannot tell
  whether its command ran).
"""

from __future__ import annotations

import contextlib
import socket
import socketserver
import threading
from types import TracebackType
from urllib.parse import urlsplit

import redis

__all__ = ["ReplyCutProxy", "VersionProxy"]


class _Proxy:
    """A TCP proxy on a free loopback port in front of ``redis_url``'s server: ``with proxy as url``
    gives a Redis URL through it; each connection is served by :meth:`_serve` in a thread of its own."""

    def __init__(self, redis_url: str) -> None:
        parts = urlsplit(redis_url)
        self._target = (parts.hostname or "127.0.0.1", parts.port or 6379)
        self._path = parts.path
        self._server: socketserver.ThreadingTCPServer | None = None

    def __enter__(self) -> str:
        proxy = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                proxy._serve(self.request)

        self._server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return f"redis://127.0.0.1:{self._server.server_address[1]}{self._path}"

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def _serve(self, client: socket.socket) -> None:
        raise NotImplementedError


class VersionProxy(_Proxy):
    """``with VersionProxy(redis_url, major=6, minor=0) as url:`` a Redis URL whose INFO says 6.0.x."""

    def __init__(self, redis_url: str, *, major: int = 6, minor: int = 0) -> None:
        super().__init__(redis_url)
        client = redis.Redis.from_url(redis_url)
        real = str(client.info("server")["redis_version"])
        client.close()
        prefix = f"{major}.{minor}."
        if len(real) <= len(prefix):
            raise ValueError(f"cannot present {prefix}x in place of {real} at the same length")
        #: What the proxy reports instead of the real version (same length).
        self.version = prefix + "9" * (len(real) - len(prefix))
        self._real = b"redis_version:" + real.encode()
        self._fake = b"redis_version:" + self.version.encode()

    def _serve(self, client: socket.socket) -> None:
        upstream = socket.create_connection(self._target)
        pump = threading.Thread(target=self._to_upstream, args=(client, upstream), daemon=True)
        pump.start()
        held = b""
        try:
            while chunk := upstream.recv(65536):
                data = (held + chunk).replace(self._real, self._fake)
                held = self._partial_tail(data)
                client.sendall(data[: len(data) - len(held)])
        except OSError:
            pass
        finally:
            upstream.close()
            client.close()

    def _partial_tail(self, data: bytes) -> bytes:
        """The end of ``data`` that may be the start of the real version, split across reads (held
        back: the reply it is in goes on, so the client is not waiting for it alone)."""
        for size in range(min(len(self._real) - 1, len(data)), 0, -1):
            if self._real.startswith(data[-size:]):
                return data[-size:]
        return b""

    @staticmethod
    def _to_upstream(client: socket.socket, upstream: socket.socket) -> None:
        try:
            while chunk := client.recv(65536):
                upstream.sendall(chunk)
        except OSError:
            pass
        finally:
            upstream.close()  # the client left: end the other direction too


class ReplyCutProxy(_Proxy):
    """``with ReplyCutProxy(redis_url, marker) as url:`` a Redis URL whose connections are forwarded
    byte for byte, except once: the first request holding ``marker`` whose reply is not an error is
    run by Redis, and then the connection is closed instead of the reply being passed on (an error
    reply - ``NOSCRIPT`` - goes through: a command that did not run is not what this stages).
    :attr:`cuts` counts the replies lost (0 or 1)."""

    def __init__(self, redis_url: str, marker: bytes) -> None:
        super().__init__(redis_url)
        self._marker = marker
        self._lock = threading.Lock()
        self.cuts = 0

    def _serve(self, client: socket.socket) -> None:
        upstream = socket.create_connection(self._target)
        #: Set once a request holding the marker went upstream: its reply is the next one (a Redis
        #: client waits for each reply before its next command on a connection).
        marked = threading.Event()
        pump = threading.Thread(target=self._to_upstream, args=(client, upstream, marked), daemon=True)
        pump.start()
        try:
            while chunk := upstream.recv(65536):
                if marked.is_set() and not chunk.startswith(b"-"):
                    with self._lock:
                        cut = self.cuts == 0
                        self.cuts += cut
                    if cut:
                        break  # the command ran; its reply is lost with the connection
                marked.clear()
                client.sendall(chunk)
        except OSError:
            pass
        finally:
            # shut down, not only closed: a close leaves the connection open while the other pump
            # is blocked reading it, and the client would wait for the lost reply forever
            for sock in (upstream, client):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()

    def _to_upstream(self, client: socket.socket, upstream: socket.socket, marked: threading.Event) -> None:
        tail = b""
        try:
            while chunk := client.recv(65536):
                if self._marker in tail + chunk:
                    marked.set()
                tail = chunk[-len(self._marker) :]
                upstream.sendall(chunk)
        except OSError:
            pass
        finally:
            upstream.close()

"""Running the gateway on uvicorn: in the foreground (``llmq gateway``) or in a thread (tests, benchmarks).

uvicorn's h11 protocol implements ``send`` with write flow control (it waits while the socket's
write buffer is above the high-water mark), which is what the per-write deadline relies on.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time

import uvicorn
from starlette.applications import Starlette

__all__ = ["GatewayThread", "listen_socket", "serve", "uvicorn_config"]


def uvicorn_config(
    app: Starlette, *, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info"
) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        http="h11",
        lifespan="on",
        log_level=log_level,
        access_log=log_level == "debug",
        # SSE responses are long; on shutdown give them a moment, then cancel them.
        timeout_graceful_shutdown=5,
        server_header=False,
    )


def listen_socket(host: str, port: int, *, sndbuf: int | None = None) -> socket.socket:
    """A bound listening socket; ``sndbuf`` pins the kernel send buffer of accepted connections.

    Connections inherit SO_SNDBUF from the listening socket. Left alone, Linux autotunes each send
    buffer up to ``net.ipv4.tcp_wmem``'s maximum (4 MiB by default; megabytes quickly on loopback),
    which is kernel memory held for every slow client; a pinned buffer bounds it.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if sndbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
    sock.bind((host, port))
    return sock


def serve(app: Starlette, *, host: str, port: int, log_level: str = "info", sndbuf: int | None = None) -> None:
    """Run until SIGINT/SIGTERM."""
    sock = listen_socket(host, port, sndbuf=sndbuf)
    uvicorn.Server(uvicorn_config(app, host=host, port=port, log_level=log_level)).run(sockets=[sock])


class GatewayThread:
    """The gateway on 127.0.0.1 (a free port by default), on its own event loop in a daemon thread.

    ``sndbuf``: see :func:`listen_socket`. On loopback, with its 64 KiB MSS, Linux autotunes send
    buffers to megabytes, so a test of a stalled client would have to push megabytes before
    ``send`` ever waits; a pinned buffer behaves like a connection over a real network.
    """

    def __init__(
        self,
        app: Starlette,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        log_level: str = "warning",
        sndbuf: int | None = None,
    ) -> None:
        self.app = app
        self._sock = listen_socket(host, port, sndbuf=sndbuf)
        self.host, self.port = self._sock.getsockname()[:2]
        self.server = uvicorn.Server(uvicorn_config(app, host=self.host, port=self.port, log_level=log_level))
        self._thread = threading.Thread(target=self._run, name="llmq-gateway", daemon=True)
        self.loop: asyncio.AbstractEventLoop | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _run(self) -> None:
        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self.server.serve(sockets=[self._sock]))
        finally:
            self.loop.close()

    def start(self, timeout: float = 15.0) -> GatewayThread:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self._thread.is_alive():
                raise RuntimeError("the gateway thread exited during startup")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the gateway did not start within {timeout}s")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self._thread.join(15)
        with contextlib.suppress(OSError):
            self._sock.close()

    def __enter__(self) -> GatewayThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

"""Running the gateway on uvicorn: in the foreground (``llmq gateway``) or in a thread (tests, benchmarks).

uvicorn's h11 protocol implements ``send`` with write flow control (it waits while the socket's
write buffer is above the high-water mark), which is what the per-write deadline relies on.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading

import uvicorn
from starlette.applications import Starlette

__all__ = ["GatewayThread", "serve", "uvicorn_config"]


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


def serve(app: Starlette, *, host: str, port: int, log_level: str = "info") -> None:
    """Run until SIGINT/SIGTERM."""
    uvicorn.Server(uvicorn_config(app, host=host, port=port, log_level=log_level)).run()


class GatewayThread:
    """The gateway on 127.0.0.1 (a free port by default), on its own event loop in a daemon thread."""

    def __init__(self, app: Starlette, *, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning") -> None:
        self.app = app
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, port))
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
        deadline = threading.Event()
        waited = 0.0
        while not self.server.started:
            if not self._thread.is_alive():
                raise RuntimeError("the gateway thread exited during startup")
            if waited >= timeout:
                raise RuntimeError(f"the gateway did not start within {timeout}s")
            deadline.wait(0.02)
            waited += 0.02
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

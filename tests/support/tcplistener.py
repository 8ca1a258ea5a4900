"""A real TCP listener on a free loopback port, for servers a test scripts byte by byte."""

from __future__ import annotations

import socket
import threading
from types import TracebackType
from typing import Self

__all__ = ["TCPListener"]


class TCPListener:
    """Each connection it accepts is counted (:attr:`connections`) and handed to :meth:`serve` in a
    thread of its own, until :meth:`close`. A subclass sets its own state first, then :meth:`start`\\s
    it (or uses it as a context manager, which starts and closes it)."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.sock.getsockname()[1]
        self.connections = 0

    def start(self) -> Self:
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:  # closed
                return
            self.connections += 1
            threading.Thread(target=self.serve, args=(conn,), daemon=True).start()

    def serve(self, conn: socket.socket) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

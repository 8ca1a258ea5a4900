"""A webhook receiver for tests: a real HTTP server on 127.0.0.1 that records every delivery.

Its behaviour per delivery is a function of the ``webhook-id`` and how many times it was seen:
answer a status (with headers, e.g. ``Retry-After``), or hang until released (a dead receiver that
keeps connections open).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

__all__ = ["Delivery", "Receiver"]


@dataclass(frozen=True)
class Delivery:
    headers: dict[str, str]
    body: bytes
    status: int | None  # None: the receiver hung


Answer = int | tuple[int, dict[str, str]]


class Receiver:
    """``answer(msg_id, nth) -> status`` or ``(status, headers)`` (nth counts from 1); a status of 0
    hangs until :meth:`release`."""

    def __init__(self, answer: Callable[[str, int], Answer] = lambda _id, _n: 200) -> None:
        self.answer = answer
        self.deliveries: list[Delivery] = []
        self.hanging = 0
        self._seen: dict[str, int] = {}
        self._lock = threading.Lock()
        self._release = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                headers = {k.lower(): v for k, v in self.headers.items()}
                msg_id = headers.get("webhook-id", "")
                with receiver._lock:
                    nth = receiver._seen[msg_id] = receiver._seen.get(msg_id, 0) + 1
                answer = receiver.answer(msg_id, nth)
                status, extra = answer if isinstance(answer, tuple) else (answer, {})
                if status == 0:
                    with receiver._lock:
                        receiver.hanging += 1
                        receiver.deliveries.append(Delivery(headers, body, None))
                    receiver._release.wait(120)
                    return
                with receiver._lock:
                    receiver.deliveries.append(Delivery(headers, body, status))
                self.send_response(status)
                for name, value in extra.items():
                    self.send_header(name, value)
                self.send_header("content-length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Receiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
        self.server.shutdown()
        self.server.server_close()

    def release(self) -> None:
        self._release.set()

    def answered(self, status: int) -> list[Delivery]:
        with self._lock:
            return [d for d in self.deliveries if d.status == status]

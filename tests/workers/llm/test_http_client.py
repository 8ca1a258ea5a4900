"""The pooled HTTP client: idle keep-alive connections the server closed are noticed and dropped."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import httpcore2
import pytest

from tests.support.tcplistener import TCPListener
from tests.support.waits import until
from workers.llm.errors import LLMQError
from workers.llm.httpclient import HTTPClient, HTTPSettings, _ProbingBackend, _ProbingStream

BODY = b'{"ok":true}'


class ClosingServer(TCPListener):
    """Answers each request with keep-alive, then closes the idle socket 50 ms later."""

    def __init__(self) -> None:
        super().__init__()
        self.url = f"http://127.0.0.1:{self.port}"
        #: Connections this server has hung up on.
        self.closed = 0
        self.start()

    def serve(self, conn: socket.socket) -> None:
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                data += chunk
            head = f"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {len(BODY)}\r\n\r\n"
            conn.sendall(head.encode() + BODY)
            time.sleep(0.05)  # then hang up on the idle keep-alive connection
        self.closed += 1


@pytest.fixture
def server() -> Iterator[ClosingServer]:
    s = ClosingServer()
    yield s
    s.close()


def _error(status: int, headers: object, body: bytes) -> LLMQError:  # pragma: no cover - never called
    return LLMQError(f"HTTP {status}")


def test_pools_probe_idle_connections_with_the_native_poll(server: ClosingServer) -> None:
    client = HTTPClient(HTTPSettings(pool_shards=1))
    try:
        # ours, not the library's own backend (a library update that moves the pool shows up here)
        assert isinstance(client._clients[0]._transport._pool._network_backend, _ProbingBackend)
        for n in range(1, 4):
            _, body = client.post(
                f"{server.url}/x", headers={}, body=b"{}", provider="openai", model="m", error_mapper=_error
            )
            assert body == BODY
            until(lambda n=n: server.closed >= n, "the server to hang up on the pooled connection", 30)
        assert server.connections == 3  # each stale connection was noticed and replaced, none failed
    finally:
        client.close()


def test_requests_are_spread_over_the_pool_shards() -> None:
    client = HTTPClient(HTTPSettings(max_connections=200))
    try:
        assert len(client._clients) == 25  # one pool per 8 connections (CONNECTIONS_PER_SHARD)
        assert len({id(client._client) for _ in range(50)}) == 25
        # one TLS context (CA certificates loaded once, ~1.1 MB each), not one per shard
        assert len({id(c._transport._pool._ssl_context) for c in client._clients}) == 1  # type: ignore[attr-defined]
    finally:
        client.close()


class _IdleStream(httpcore2.NetworkStream):
    """A pooled connection's stream as the probe sees it: a socket, reads and writes that do nothing."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return b""

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        pass

    def close(self) -> None:
        pass

    def get_extra_info(self, info: str) -> object:
        return self.sock if info == "socket" else None


def test_a_quiet_socket_is_probed_once_per_window_and_again_after_any_use() -> None:
    answers = [False, False, True, False, False]
    probes: list[int] = []

    def probe(sock: socket.socket) -> bool:
        probes.append(sock.fileno())
        return answers[len(probes) - 1]

    now = [100.0]
    a, b = socket.socketpair()
    try:
        stream = _ProbingStream(_IdleStream(a), probe)
        stream.clock = lambda: now[0]
        # a burst of checks on an idle connection (one per request the pool assigns): one poll
        assert [stream.get_extra_info("is_readable") for _ in range(5)] == [False] * 5
        assert len(probes) == 1
        now[0] += 1.5 * _ProbingStream.PROBE_REUSE_S  # the window has passed: polled again
        assert stream.get_extra_info("is_readable") is False and len(probes) == 2
        stream.write(b"request")  # used: what the socket said before no longer counts
        assert stream.get_extra_info("is_readable") is True and len(probes) == 3
        # "readable" (the server hung up) is never reused: the next check polls again
        assert stream.get_extra_info("is_readable") is False and len(probes) == 4
        stream.read(10)
        assert stream.get_extra_info("is_readable") is False and len(probes) == 5
    finally:
        a.close()
        b.close()


class _RecordingStream(_IdleStream):
    """Records what reaches the socket: each write as sent, and reads in between."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__(sock)
        self.sent: list[object] = []

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        self.sent.append("read")
        return b""

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self.sent.append((buffer, timeout))


def test_a_requests_headers_and_body_go_out_in_one_write_before_any_read() -> None:
    a, b = socket.socketpair()
    try:
        inner = _RecordingStream(a)
        stream = _ProbingStream(inner, lambda sock: False)
        head = b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\n"
        stream.write(head, 5.0)
        assert inner.sent == []  # held for its body
        stream.write(b"{}", 5.0)
        stream.write(b"", 5.0)  # h11's end of a length-framed body: nothing to send
        stream.read(10)
        assert inner.sent == [(head + b"{}", 5.0), "read"]
        # a request without a body (GET): its headers go out before its answer is read
        inner.sent.clear()
        get = b"GET /v1/batches/b1 HTTP/1.1\r\nhost: x\r\n\r\n"
        stream.write(get, 3.0)
        stream.write(b"", 3.0)
        assert inner.sent == []
        stream.read(10)
        assert inner.sent == [(get, 3.0), "read"]
        # a body that itself ends like a header block is sent by the read too, whole and in order
        inner.sent.clear()
        stream.write(head, 1.0)
        stream.write(b"x\r\n\r\n", 1.0)
        stream.read(10)
        assert inner.sent == [(head + b"x\r\n\r\n", 1.0), "read"]
        # a connection closed with a held request sends nothing
        inner.sent.clear()
        stream.write(get, 1.0)
        stream.close()
        assert inner.sent == []
    finally:
        a.close()
        b.close()


def _refusing_port() -> int:
    """A local port nothing listens on (bound, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _no_status(*_args: object) -> LLMQError:  # never called: no status line ever arrives
    raise AssertionError("no response was expected")


def test_a_refused_connection_names_where_it_went_and_nothing_secret() -> None:
    """A wrong base URL: the error says which origin refused, never the URL's path, query or user."""
    port = _refusing_port()
    client = HTTPClient(HTTPSettings())
    url = f"http://user:pw-SECRET@127.0.0.1:{port}/v1/chat/completions?key=SECRET"
    try:
        for call in (client.open_stream, client.post):
            with pytest.raises(LLMQError) as raised:
                call(url, headers={}, body=b"{}", provider="openai", model="m", error_mapper=_no_status)
            err = raised.value
            assert err.type_name == "connection_error" and err.retryable, err
            assert f"(connecting to http://127.0.0.1:{port})" in err.message, err.message
            assert "SECRET" not in str(err) and "/v1" not in err.message
    finally:
        client.close()

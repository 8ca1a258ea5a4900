"""HTTP/1.1 chunked bodies read straight off the connection (``workers/llm/chunkedbody.py``).

The reader is checked against every way TCP can cut a body (a scripted network stream, each split
point), against what h11 must be left with (the message ended in its own state, what followed the
body still buffered), and end to end through :class:`HTTPClient` on real sockets: the simulator's
streams take this path, a finished body gives its connection back to the pool, and a body cut
short, malformed or too slow ends in our typed errors with the connection discarded.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator

import h11
import httpx2
import pytest

from simulator.app import SimulatorThread
from tests.support.tcplistener import TCPListener
from tests.support.waits import until
from workers.llm.abort import AbortSignal
from workers.llm.chunkedbody import read_chunked
from workers.llm.errors import IncompleteStreamError, JobCancelledError, LLMQError, ProviderTimeoutError
from workers.llm.httpclient import HTTPClient, HTTPSettings

HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"


def chunked(*parts: bytes, trailers: bytes = b"") -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n" + trailers + b"\r\n"


class Script:
    """A network stream whose reads return the given byte strings in order, then end of stream."""

    def __init__(self, reads: list[bytes]) -> None:
        self.reads = list(reads)
        self.calls = 0

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        self.calls += 1
        return self.reads.pop(0) if self.reads else b""


def client_after_headers(first: bytes = b"") -> h11.Connection:
    """A client h11 connection that sent a request and read a chunked response's headers, with
    ``first`` (the start of the body) buffered behind them, as a real read leaves it."""
    state = h11.Connection(h11.CLIENT)
    state.send(h11.Request(method="POST", target="/", headers=[("host", "x"), ("content-length", "0")]))
    state.send(h11.EndOfMessage())
    state.receive_data(HEAD + first)
    assert isinstance(state.next_event(), h11.Response)
    return state


BODY = chunked(b'data: {"a":1}\n\n', b"x" * 300, b"data: [DONE]\n\n")
DATA = b'data: {"a":1}\n\n' + b"x" * 300 + b"data: [DONE]\n\n"


@pytest.mark.parametrize("cut", range(len(BODY) + 1))
def test_every_split_point_gives_the_body_and_ends_the_message_in_h11(cut: int) -> None:
    state = client_after_headers(BODY[:cut])
    got = b"".join(read_chunked(state, Script([BODY[cut:]] if cut < len(BODY) else [])))
    assert got == DATA
    assert state.their_state is h11.DONE and state.trailing_data == (b"", False)


def test_a_body_arriving_byte_by_byte() -> None:
    state = client_after_headers()
    items = list(read_chunked(state, Script([bytes([b]) for b in BODY])))
    assert b"".join(items) == DATA and state.their_state is h11.DONE


def test_what_one_read_completes_is_one_item_yielded_before_the_next_read() -> None:
    three = chunked(b"a", b"b", b"c")[: -len(b"0\r\n\r\n")]
    network = Script([three, chunked(b"d")])
    reader = read_chunked(client_after_headers(), network)
    assert next(reader) == b"abc" and network.calls == 1  # nothing waited for beyond that read
    assert list(reader) == [b"d"] and network.calls == 2


def test_extensions_trailers_and_what_follows_the_body() -> None:
    body = b"5;name=value\r\nhello\r\n3 \r\n, x\r\n0\r\nx-trailer: 1\r\n\r\n"
    state = client_after_headers()
    assert b"".join(read_chunked(state, Script([body + b"NEXT"]))) == b"hello, x"
    assert state.their_state is h11.DONE and state.trailing_data == (b"NEXT", False)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (chunked(b"hello")[:8], "incomplete chunked read"),  # the peer closed mid-chunk
        (b"zz\r\nhello\r\n", "illegal chunk header"),
        (b"5\r\nhelloXY0\r\n\r\n", "malformed chunk footer"),
        (b"1" * 200_000, "too long"),
    ],
)
def test_a_broken_body_is_the_librarys_protocol_error_and_h11_stays_unfinished(body: bytes, message: str) -> None:
    state = client_after_headers()
    with pytest.raises(httpx2.RemoteProtocolError, match=message):
        b"".join(read_chunked(state, Script([body])))
    assert state.their_state is h11.SEND_BODY  # never reused: the pool discards it at close


# --- through the client, on real sockets --------------------------------------------------------------


class ChunkServer(TCPListener):
    """Answers each request on a keep-alive connection with the next scripted response (a list of
    writes; ``None``: hang up there; ``"wait"``: stall until released)."""

    def __init__(self, responses: list[list[bytes | str | None]]) -> None:
        super().__init__()
        self.responses = responses
        self.release = threading.Event()
        self.url = f"http://127.0.0.1:{self.port}/v1/x"
        self.start()

    def serve(self, conn: socket.socket) -> None:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with conn:
            data = b""
            while self.responses:
                while b"\r\n\r\n" not in data:
                    got = conn.recv(65536)
                    if not got:
                        return
                    data += got
                head, _, data = data.partition(b"\r\n\r\n")
                lines = head.lower().split(b"\r\n")
                length = int(next((x.split(b":")[1] for x in lines if x.startswith(b"content-length")), b"0"))
                while len(data) < length:
                    data += conn.recv(65536)
                data = data[length:]
                for write in self.responses.pop(0):
                    if write is None:
                        return
                    if write == "wait":
                        self.release.wait(30)
                        continue
                    assert isinstance(write, bytes)
                    conn.sendall(write)

    def close(self) -> None:
        self.release.set()
        super().close()


def _error(status: int, headers: object, body: bytes) -> LLMQError:  # pragma: no cover - 2xx only here
    raise AssertionError(status)


@pytest.fixture
def client() -> Iterator[HTTPClient]:
    http = HTTPClient(HTTPSettings(max_connections=4, read_timeout=0.5))  # a stall is cut at 0.5 s
    yield http
    http.close()


def _stream(client: HTTPClient, url: str) -> tuple[bytes, bool]:
    reader = client.open_stream(url, headers={}, body=b"{}", provider="p", model="m", error_mapper=_error)
    try:
        return b"".join(reader.iter_bytes()), reader.direct
    finally:
        reader.close()


def test_a_chunked_stream_is_read_directly_and_its_connection_reused(client: HTTPClient) -> None:
    server = ChunkServer([[HEAD, BODY[:20], BODY[20:]], [HEAD + BODY]])
    try:
        assert _stream(client, server.url) == (DATA, True)
        assert _stream(client, server.url) == (DATA, True)
        assert server.connections == 1  # h11 saw the message end: the pool kept the connection
    finally:
        server.close()


def test_a_content_length_body_stays_the_librarys(client: HTTPClient) -> None:
    server = ChunkServer([[b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello"]])
    try:
        assert _stream(client, server.url) == (b"hello", False)
    finally:
        server.close()


def test_a_body_cut_short_is_incomplete_and_the_connection_not_reused(client: HTTPClient) -> None:
    server = ChunkServer([[HEAD, BODY[:30], None], [HEAD + BODY]])
    try:
        with pytest.raises(IncompleteStreamError, match="incomplete chunked read"):
            _stream(client, server.url)
        assert _stream(client, server.url) == (DATA, True)
        assert server.connections == 2
    finally:
        server.close()


def test_a_stalled_body_is_the_read_timeout(client: HTTPClient) -> None:
    server = ChunkServer([[HEAD, BODY[:30], "wait"]])
    try:
        with pytest.raises(ProviderTimeoutError):
            _stream(client, server.url)
    finally:
        server.close()


def test_the_simulators_streams_take_the_direct_path(simulator: SimulatorThread, client: HTTPClient) -> None:
    body = json.dumps({"model": "gpt-4o-mini", "stream": True, "messages": [{"role": "user", "content": "hi"}]})
    reader = client.open_stream(
        f"{simulator.url}/v1/chat/completions",
        headers={"content-type": "application/json"},
        body=body.encode(),
        provider="openai",
        model="gpt-4o-mini",
        error_mapper=_error,
    )
    try:
        text = b"".join(reader.iter_bytes())
    finally:
        reader.close()
    assert reader.direct and text.rstrip().endswith(b"data: [DONE]")


@pytest.fixture
def patient() -> Iterator[HTTPClient]:
    """A client whose read timeout never ends a stall before the test does (a loaded machine)."""
    http = HTTPClient(HTTPSettings(max_connections=4, read_timeout=60))
    yield http
    http.close()


def test_a_cancel_ends_a_whole_body_call_stalled_mid_body(patient: HTTPClient) -> None:
    """A whole-body call armed with an abort signal reads through the network stream (which the
    signal shuts down): firing it mid-body ends the call as cancelled, not at the read timeout."""
    server = ChunkServer([[HEAD, BODY[:30], "wait"]])
    abort = AbortSignal()
    outcome: list[BaseException] = []

    def call() -> None:
        try:
            patient.post(server.url, headers={}, body=b"{}", provider="p", model="m", error_mapper=_error, abort=abort)
        except BaseException as exc:
            outcome.append(exc)

    caller = threading.Thread(target=call)
    caller.start()
    try:
        until(lambda: server.connections == 1 or outcome, lambda: f"the call's connection ({outcome})", 10)
        abort.fire()
        caller.join(10)
        assert not caller.is_alive() and len(outcome) == 1 and isinstance(outcome[0], JobCancelledError)
    finally:
        server.close()


def test_a_stream_closed_elsewhere_mid_body_ends_its_read(patient: HTTPClient) -> None:
    """A stream's body is read from its socket straight; a close from another thread (a job's
    cancel, the whole-request deadline) shuts the socket down, which wakes that read."""
    server = ChunkServer([[HEAD, BODY[:30], "wait"]])
    reader = patient.open_stream(server.url, headers={}, body=b"{}", provider="p", model="m", error_mapper=_error)
    outcome: list[BaseException] = []

    def read() -> None:
        try:
            b"".join(reader.iter_bytes())
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=read)
    thread.start()
    try:
        until(lambda: reader.direct, "the body read started", 10)
        reader.close()
        thread.join(10)
        assert not thread.is_alive() and len(outcome) == 1 and isinstance(outcome[0], IncompleteStreamError)
    finally:
        server.close()


def test_a_size_line_trickling_in_byte_by_byte_is_read_linearly_and_bounded() -> None:
    """A size line that never ends, one byte per read: each byte is searched once (not the whole
    line again per read), and the line is refused at h11's limit."""
    network = Script([b"1"] * 150_000)
    with pytest.raises(httpx2.RemoteProtocolError, match="too long"):
        b"".join(read_chunked(client_after_headers(), network))
    assert 100 * 1024 < network.calls < 150_000


def test_a_crlf_split_between_two_reads_ends_the_line() -> None:
    state = client_after_headers()
    assert b"".join(read_chunked(state, Script([b"5\r", b"\nhello\r", b"\n0\r", b"\n\r", b"\n"]))) == b"hello"
    assert state.their_state is h11.DONE

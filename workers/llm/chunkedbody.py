"""HTTP/1.1 chunked response bodies read straight off their connection: the streaming hot path.

Why. A streamed answer arrives a chunk at a time, each its own socket read. Through the library
every read went httpx's byte streams, httpcore's pool and connection streams (each with its own
exception mapping and trace hooks) and h11's event machinery (``next_event``, its receive buffer,
``ChunkedReader``, state transitions): ~17 % of a ``-P gevent -c 200`` worker's samples at 1 s
upstream besides the read itself (py-spy; bench/RESULTS-queue.md). Here one loop reads the same
network stream, finds each chunk's size line, slices its data and yields what a read brought.

The connection stays the library's. The body is taken over only at its very start, when h11 is
about to read a chunked body (their state ``SEND_BODY``, its chunk reader untouched), together
with any body bytes h11 had already buffered behind the headers. At the end h11 is handed the
zero-size last chunk (and whatever followed the body), so h11 itself sees the message end and
the pool keeps the connection for the next request as if h11 had read it all. An error (a read
timeout, the peer closing mid-body, a malformed chunk) leaves h11 mid-message, and the connection
is discarded when the response is closed: what the library does. Reads go through the
connection's own network stream (``_ProbingStream``: cancels and shutdowns wake them as before).

Where the library's objects are not shaped as expected (an update), :func:`take_over` returns
``None`` and the library reads the body; ``tests/workers/llm/test_chunked_body.py`` checks the
take-over happens, so such an update is noticed. Content-length and read-to-close bodies, HTTP/2
and content-encoded bodies stay the library's.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import h11
import httpcore2
import httpx2 as httpx

__all__ = ["read_chunked", "take_over"]

#: A chunk's size line as h11 accepts it: 1-20 hex digits, an optional extension, optional
#: whitespace (the CRLF is found separately).
_SIZE_LINE = re.compile(rb"([0-9A-Fa-f]{1,20})(?:;.*)?[ \t]*", re.DOTALL)
#: Longest size or trailer line waited for (httpcore's h11 ``max_incomplete_event_size``).
_MAX_LINE = 100 * 1024
#: What h11 is handed at the end: the last chunk, no trailers.
_LAST_CHUNK = b"0\r\n\r\n"


def take_over(response: httpx.Response) -> Iterator[bytes] | None:
    """The body's bytes read directly (one item per read, what it completed), or ``None`` when
    the library must read it (not a fresh HTTP/1.1 chunked body, or unfamiliar library objects)."""
    if response.http_version != "HTTP/1.1" or "content-encoding" in response.headers:
        return None
    stream: Any = response.stream
    for attr in ("_stream", "_httpcore_stream", "_stream"):  # httpx's bound and response streams, the pool's
        stream = getattr(stream, attr, None)
    connection = getattr(stream, "_connection", None)
    request = getattr(stream, "_request", None)
    if not isinstance(connection, httpcore2.HTTP11Connection) or getattr(stream, "_closed", True):
        return None
    state = getattr(connection, "_h11_state", None)
    network = getattr(connection, "_network_stream", None)
    if not isinstance(state, h11.Connection) or network is None or state.their_state is not h11.SEND_BODY:
        return None
    reader = getattr(state, "_reader", None)
    fresh = (
        type(reader).__name__ == "ChunkedReader"
        and getattr(reader, "_bytes_in_chunk", None) == 0
        and getattr(reader, "_bytes_to_discard", None) == b""
        and getattr(reader, "_reading_trailer", None) is False
    )
    buffer = getattr(state, "_receive_buffer", None)
    if not fresh or buffer is None or not hasattr(buffer, "maybe_extract_at_most"):
        return None
    timeouts = getattr(request, "extensions", {}).get("timeout", {})
    return read_chunked(state, network, timeouts.get("read"), getattr(connection, "READ_NUM_BYTES", 65_536))


def read_chunked(
    state: h11.Connection, network: Any, timeout: float | None = None, read_size: int = 65_536
) -> Iterator[bytes]:
    """The chunked body h11 (``state``, headers read) was about to read, from its buffer then
    ``network`` (a ``read(max_bytes, timeout) -> bytes`` stream); h11 is left at the message end."""
    buffer = state._receive_buffer
    held = buffer.maybe_extract_at_most(len(buffer))
    data = bytes(held) if held else b""
    pos = 0

    def read() -> bytes:
        """The next read's bytes (the only place that waits)."""
        try:
            got: bytes = network.read(read_size, timeout)
        except httpcore2.TimeoutException as exc:
            raise httpx.ReadTimeout(str(exc)) from None
        except (httpcore2.NetworkError, httpcore2.ProtocolError) as exc:
            raise httpx.ReadError(str(exc)) from None
        if not got:
            raise httpx.RemoteProtocolError(
                "peer closed connection without sending complete message body (incomplete chunked read)"
            )
        return got

    # what a read completed is yielded as one item before the next read waits
    pieces: list[bytes] = []
    trailer = False
    while True:
        end = data.find(b"\r\n", pos)
        if end < 0:  # a size or trailer line still arriving: gathered, each byte searched once
            if pieces:
                yield pieces[0] if len(pieces) == 1 else b"".join(pieces)
                pieces = []
            line = bytearray(data[pos:])
            while end < 0:
                if len(line) > _MAX_LINE:
                    raise httpx.RemoteProtocolError("chunk size or trailer line too long")
                start = max(len(line) - 1, 0)  # a CRLF may straddle two reads
                line += read()
                end = line.find(b"\r\n", start)
            data, pos = bytes(line), 0
        text, pos = data[pos:end], end + 2
        if trailer:
            if not text:  # the empty line: the message is complete (trailers are dropped, as httpx does)
                break
            continue
        match = _SIZE_LINE.fullmatch(text)
        if match is None:
            raise httpx.RemoteProtocolError(f"illegal chunk header: {text[:80]!r}")
        left = int(match.group(1), 16)
        if left == 0:
            trailer = True
            if pieces:
                yield pieces[0] if len(pieces) == 1 else b"".join(pieces)
                pieces = []
            continue
        while left:
            if pos >= len(data):
                if pieces:
                    yield pieces[0] if len(pieces) == 1 else b"".join(pieces)
                    pieces = []
                data, pos = read(), 0
            piece = data[pos : pos + left]
            pos += len(piece)
            left -= len(piece)
            pieces.append(piece)
        while len(data) - pos < 2:
            if pieces:
                yield pieces[0] if len(pieces) == 1 else b"".join(pieces)
                pieces = []
            data, pos = data[pos:] + read(), 0
        if data[pos : pos + 2] != b"\r\n":
            raise httpx.RemoteProtocolError(f"malformed chunk footer: {data[pos : pos + 2]!r}")
        pos += 2
    # h11 reads the last chunk itself: the message ends in its own state machine, and what came
    # after the body stays in its buffer, as if it had read everything
    state.receive_data(_LAST_CHUNK + data[pos:])
    end_event = state.next_event()
    if not isinstance(end_event, h11.EndOfMessage):  # pragma: no cover - h11 read the chunk it was given
        raise httpx.RemoteProtocolError(f"unexpected end of body: {end_event!r}")

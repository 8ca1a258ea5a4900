"""Writing one answer: a whole body or a paced stream, with the fault of the request applied.

The per-token path is kept lean for benchmarks with ~1000 concurrent streams: unpaced streams
go out in as few writes as possible (one, when there is no latency and no mid-stream fault);
paced streams do one write per token, driven by the shared :class:`~simulator.pacer.Pacer`
(one timer for all streams, deadlines computed from each stream's start so pacing does not drift).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from simulator.http import Responder
from simulator.pacer import Pacer
from simulator.protocols.base import ParsedRequest, Protocol, StreamRenderer
from simulator.script import Fault, Script

__all__ = ["Answer", "send_error", "send_once", "send_stream"]

#: Faults applied in the middle of the token sequence.
MID_STREAM = frozenset({"midstream", "cut", "malformed", "stall"})
#: A stall without a duration lasts this long (the client's timeout should fire first).
DEFAULT_STALL_S = 3600.0
_HIGH_WATER = 256 * 1024


@dataclass(slots=True)
class Answer:
    protocol: Protocol
    req: ParsedRequest
    script: Script
    fault: Fault
    #: Seconds before the first token (latency plus any ``slow`` fault).
    latency: float
    #: Seconds between tokens; 0 = unpaced.
    gap: float
    pacer: Pacer

    @property
    def usage(self) -> bool:
        return self.fault.kind != "nousage"


async def send_error(protocol: Protocol, fault: Fault, req: ParsedRequest, out: Responder) -> None:
    status, headers, body = protocol.error(fault, req)
    await out.send(status, body, protocol.content_type, headers)


async def send_once(a: Answer, out: Responder) -> str:
    """A non-stream answer; returns the outcome (``ok``, ``cut``, ``midstream``)."""
    kind = a.fault.kind
    delay = a.latency + len(a.script.tokens) * a.gap
    if kind == "stall":
        delay += a.fault.arg if a.fault.arg is not None else DEFAULT_STALL_S
    if delay > 0:
        await asyncio.sleep(delay)
    if kind == "midstream":  # the generation failed: non-stream requests see an HTTP error instead
        await send_error(a.protocol, a.protocol.midstream_fault, a.req, out)
        return "midstream"
    body = a.protocol.complete_body(a.req, a.script, a.usage)
    headers = a.protocol.success_headers()
    if kind == "cut":
        await out.send_partial(200, body, len(body) // 2, a.protocol.content_type, headers)
        return "cut"
    if kind == "malformed":
        body = body[: len(body) // 2]
    await out.send(200, body, a.protocol.content_type, headers)
    return "ok"


async def send_stream(a: Answer, out: Responder) -> str:
    """A streamed answer; returns the outcome (``ok``, ``cut``, ``midstream``)."""
    r = a.protocol.open_stream(a.req, a.script)
    tokens = a.script.tokens
    mid = a.fault.kind in MID_STREAM
    brk = len(tokens) // 2 if mid else len(tokens)
    ctype, headers = a.protocol.stream_content_type, a.protocol.success_headers()
    if not (mid or a.latency or a.gap):  # the common benchmark case: one write
        out.start_stream(ctype, headers=headers, first=r.head() + r.tokens(tokens) + _tail(a, r), last=True)
        await out.flush()
        return "ok"
    out.start_stream(ctype, headers=headers, first=r.head())
    if a.latency > 0:
        await out.flush()
        await asyncio.sleep(a.latency)
    rest = b""
    if not a.gap:
        out.write_chunk(r.tokens(tokens[:brk]))
        if mid and (ended := await _mid_fault(a.fault, r, out)):
            return ended
        rest = r.tokens(tokens[brk:])
    else:
        transport = out.writer.transport
        write, closing, pace = transport.write, transport.is_closing, a.pacer.run
        token = r.token

        def frame(text: str) -> bytes:
            data = token(text)
            return b"%x\r\n%s\r\n" % (len(data), data)

        await pace(map(frame, tokens[:brk]), write, closing, a.gap)
        if mid:
            if ended := await _mid_fault(a.fault, r, out):
                return ended
            await pace(map(frame, tokens[brk:]), write, closing, a.gap)
        if closing():
            raise ConnectionResetError("client went away")
    out.write_last(rest + _tail(a, r))
    await out.flush()
    return "ok"


def _tail(a: Answer, r: StreamRenderer) -> bytes:
    calls = a.script.tool_calls
    return (r.tool_calls(calls) if calls else b"") + r.tail(a.usage)


async def _mid_fault(fault: Fault, r: StreamRenderer, out: Responder) -> str | None:
    """Apply a mid-stream fault; the outcome when it ended the stream, else ``None``."""
    kind = fault.kind
    if kind == "midstream":
        out.write_last(r.error())
        await out.flush()
        return "midstream"
    if kind == "cut":
        await out.flush()
        out.cut()
        return "cut"
    if kind == "malformed":
        out.write_chunk(r.malformed())
        return None
    if kind == "stall":
        await out.flush()
        await asyncio.sleep(fault.arg if fault.arg is not None else DEFAULT_STALL_S)
    return None

"""Ollama ``POST /api/chat`` as the simulator speaks it (NDJSON stream by default, or one JSON).

Every stream line is ``{"model","created_at","message":{"role":"assistant","content":...},"done":false}``;
the last one has ``"done":true`` with ``done_reason``, ``prompt_eval_count``, ``eval_count`` and
nanosecond durations. Tool calls arrive whole in one line, arguments as a JSON object. Errors are
``{"error": "<string>"}``, also as a line inside a 200 stream. The answer limit is
``options.num_predict`` (negative or absent: no limit).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from simulator.protocols.base import (
    ParsedRequest,
    Protocol,
    Reply,
    RequestError,
    StreamRenderer,
    ToolSpec,
    content_text,
    jstr,
    request_id,
    trailing_tool_results,
)
from simulator.script import Fault, Script, ToolCall
from simulator.structured import ollama_params, token_logprobs

__all__ = ["OllamaProtocol"]

_ERRORS: dict[str, tuple[int, str]] = {
    "429": (429, "too many requests, please retry later"),
    "429ms": (429, "too many requests, please retry later"),
    # Ollama has no billing; this is what a metered gateway in front of it says (synthetic).
    "quota": (429, "insufficient_quota: usage limit exceeded, check your plan and billing details"),
    "context": (400, "the input length exceeds the context length"),
    "400": (400, "invalid message format"),
    "401": (401, "unauthorized"),
    "403": (403, "forbidden"),
    "500": (500, "llama runner process has terminated: exit status 2"),
    "502": (502, "bad gateway"),
    "503": (503, "server busy, please try again.  maximum pending requests exceeded"),
    "529": (529, "server overloaded, please try again later"),
}
_FINISH = {"stop": "stop", "length": "length", "tool": "stop", "refusal": "stop", "filter": "stop"}
_MIDSTREAM = b'{"error":"an error was encountered while running the model"}\n'


class _Clock:
    """``created_at`` text, formatted at most once per millisecond."""

    __slots__ = ("_ms", "_text")

    def __init__(self) -> None:
        self._ms = -1
        self._text = b""

    def now(self) -> bytes:
        ms = time.time_ns() // 1_000_000
        if ms != self._ms:
            self._ms = ms
            stamp = datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")
            self._text = stamp.encode() + b"Z"
        return self._text


def _body(message: str) -> bytes:
    return json.dumps({"error": message}, separators=(",", ":")).encode()


class OllamaProtocol(Protocol):
    name = "ollama"
    path = "/api/chat"
    stream_content_type = "application/x-ndjson"
    content_type = "application/json; charset=utf-8"

    def __init__(self) -> None:
        self.clock = _Clock()

    def parse(self, payload: dict[str, Any]) -> ParsedRequest:
        if not payload.get("model"):
            raise RequestError("model is required")
        messages = payload.get("messages") or []
        if not isinstance(messages, list):
            raise RequestError("invalid message format")
        options = payload.get("options") or {}
        limit = options.get("num_predict") if isinstance(options, dict) else None
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int)):
            raise RequestError('option "num_predict" must be of type integer')
        tools = [
            ToolSpec(t["function"]["name"], t["function"].get("parameters"))
            for t in payload.get("tools") or []
            if isinstance(t, dict) and isinstance(t.get("function"), dict) and "name" in t["function"]
        ]
        return ParsedRequest(
            model=str(payload["model"]),
            prompt_text=" ".join(content_text(m.get("content")) for m in messages if isinstance(m, dict)),
            max_tokens=limit if limit is not None and limit > 0 else None,
            stream=payload.get("stream", True) is not False,
            tools=tools,
            message_count=max(1, len(messages)),
            tool_results=trailing_tool_results(messages),
            params=ollama_params(payload, options if isinstance(options, dict) else {}),
        )

    def invalid(self, err: RequestError) -> Reply:
        return err.status, [], _body(err.message)

    def error(self, fault: Fault, req: ParsedRequest) -> Reply:
        kind = fault.kind
        headers: list[tuple[str, str]] = []
        if kind == "404":
            return 404, headers, _body(f'model "{req.base_model}" not found, try pulling it first')
        status, message = _ERRORS.get(kind) or (int(kind), f"simulated HTTP {kind}")
        if kind == "429":
            headers.append(("retry-after", str(int(fault.arg)) if fault.arg is not None else "1"))
        elif kind == "429ms":  # synthetic: Ollama has no rate limits; as in front of it by a gateway
            ms = fault.arg if fault.arg is not None else 500.0
            headers += [("retry-after-ms", str(int(ms))), ("retry-after", str(math.ceil(ms / 1000)))]
        return status, headers, _body(message)

    def complete_body(self, req: ParsedRequest, script: Script, usage: bool) -> bytes:
        start = time.perf_counter_ns()
        message: dict[str, object] = {"role": "assistant", "content": script.text}
        if script.tool_calls:
            message["tool_calls"] = _tool_calls(script.tool_calls)
        body: dict[str, object] = {
            "model": req.base_model,
            "created_at": self.clock.now().decode(),
            "message": message,
            "done_reason": _FINISH[script.finish],
            "done": True,
        }
        if req.params.logprobs is not None:
            body["logprobs"] = _logprobs(script.tokens, req.params.logprobs)
        body.update(_done_counts(script, start, start, usage))
        return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()

    def open_stream(self, req: ParsedRequest, script: Script) -> StreamRenderer:
        return _OllamaStream(req, script, self.clock)


def _logprobs(tokens: Sequence[str], top: int) -> list[dict[str, object]]:
    """Ollama's ``logprobs`` (OpenAI's token entries) for ``tokens``."""
    return [
        {
            "token": token,
            "logprob": logprob,
            "bytes": list(token.encode()),
            "top_logprobs": [{"token": t, "logprob": lp, "bytes": list(t.encode())} for t, lp in tops],
        }
        for token, logprob, tops in token_logprobs(tokens, top)
    ]


def _tool_calls(calls: list[ToolCall]) -> list[dict[str, object]]:
    return [
        {"id": "call_" + request_id("sim"), "function": {"index": i, "name": c.name, "arguments": c.arguments}}
        for i, c in enumerate(calls)
    ]


def _done_counts(script: Script, started_ns: int, first_token_ns: int, usage: bool) -> dict[str, int]:
    now = time.perf_counter_ns()
    out = {"total_duration": now - started_ns + 1000, "load_duration": 1000}
    if usage:  # Ollama omits the counts it does not have (e.g. prompt_eval_count for a cached prompt)
        out |= {
            "prompt_eval_count": script.prompt_tokens,
            "prompt_eval_duration": max(1000, first_token_ns - started_ns),
            "eval_count": script.completion_tokens,
            "eval_duration": max(1000, now - first_token_ns),
        }
    return out


class _OllamaStream(StreamRenderer):
    __slots__ = ("_clock", "_first_ns", "_logprobs", "_mid", "_pre", "_script", "_started_ns")

    def __init__(self, req: ParsedRequest, script: Script, clock: _Clock) -> None:
        self._script = script
        self._clock = clock
        self._pre = b'{"model":' + jstr(req.base_model) + b',"created_at":"'
        self._mid = b'","message":{"role":"assistant","content":'
        self._started_ns = time.perf_counter_ns()
        self._first_ns = 0
        self._logprobs = req.params.logprobs

    def head(self) -> bytes:
        return b""

    def token(self, text: str) -> bytes:
        if not self._first_ns:
            self._first_ns = time.perf_counter_ns()
        if self._logprobs is not None:
            logprobs = json.dumps(_logprobs([text], self._logprobs), separators=(",", ":")).encode()
            return (
                self._pre
                + self._clock.now()
                + self._mid
                + jstr(text)
                + b'},"logprobs":'
                + logprobs
                + b',"done":false}\n'
            )
        return self._pre + self._clock.now() + self._mid + jstr(text) + b'},"done":false}\n'

    def tool_calls(self, calls: list[ToolCall]) -> bytes:
        if not self._first_ns:
            self._first_ns = time.perf_counter_ns()
        calls_json = json.dumps(_tool_calls(calls), separators=(",", ":")).encode()
        return self._pre + self._clock.now() + self._mid + b'"","tool_calls":' + calls_json + b'},"done":false}\n'

    def tail(self, usage: bool) -> bytes:
        counts = _done_counts(self._script, self._started_ns, self._first_ns or time.perf_counter_ns(), usage)
        finish = _FINISH[self._script.finish].encode()
        extra = json.dumps(counts, separators=(",", ":")).encode()[1:-1]
        return (
            self._pre
            + self._clock.now()
            + self._mid
            + b'""},"done_reason":"'
            + finish
            + b'","done":true,'
            + extra
            + b"}\n"
        )

    def error(self) -> bytes:
        return _MIDSTREAM

    def malformed(self) -> bytes:
        return self._pre + self._clock.now() + self._mid + b'"bro\n'

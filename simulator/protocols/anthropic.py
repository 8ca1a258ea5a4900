"""Anthropic Messages (``POST /v1/messages``) as the simulator speaks it.

Streams follow the real event sequence: ``message_start`` (with ``usage.input_tokens``),
``content_block_start``/``content_block_delta`` (``text_delta``)/``content_block_stop``, a ``ping``,
``tool_use`` blocks fed by ``input_json_delta`` fragments (the first one always
``partial_json: ""``), ``message_delta`` (``stop_reason`` and ``usage.output_tokens``) and
``message_stop``. With ``thinking`` enabled the answer starts with a ``thinking`` block
(``thinking_delta`` then ``signature_delta`` when streamed) whose signature covers its text; like
the real API, a request whose last turn carries tool results is refused (400) unless the assistant
turn before it starts with that thinking block, unchanged. Errors use the ``{"type":"error","error":{...},"request_id":...}`` envelope
with a ``request-id`` header and ``x-should-retry``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import time
from datetime import UTC, datetime
from typing import Any

from simulator.promptcache import anthropic_blocks, breakpoint_problem
from simulator.protocols.base import (
    ParsedRequest,
    Protocol,
    Reply,
    RequestError,
    StreamRenderer,
    ToolSpec,
    content_text,
    jstr,
    positive_int,
    request_id,
)
from simulator.script import Fault, Script, ToolCall
from simulator.structured import anthropic_params

__all__ = ["AnthropicProtocol"]

_ERRORS: dict[str, tuple[int, str, str]] = {
    # kind: (status, error.type, message)
    "429": (
        429,
        "rate_limit_error",
        "This request would exceed the rate limit for your organization of 50 requests per minute. "
        "For details, refer to: https://docs.anthropic.com/en/api/rate-limits.",
    ),
    "quota": (
        400,
        "invalid_request_error",
        "Your credit balance is too low to access the Anthropic API. "
        "Please go to Plans & Billing to upgrade or purchase credits.",
    ),
    "400": (400, "invalid_request_error", "messages: text content blocks must be non-empty"),
    "401": (401, "authentication_error", "invalid x-api-key"),
    "403": (403, "permission_error", "Your API key does not have permission to use the specified resource."),
    "413": (413, "request_too_large", "Request exceeds the maximum allowed number of bytes."),
    "500": (500, "api_error", "Internal server error"),
    "502": (502, "api_error", "Bad gateway"),
    "503": (503, "api_error", "Service unavailable"),
    "529": (529, "overloaded_error", "Overloaded"),
}
_FINISH = {"stop": "end_turn", "length": "max_tokens", "tool": "tool_use", "refusal": "refusal", "filter": "refusal"}


def _input_usage(s: Script) -> dict[str, object]:
    """Anthropic's input counts: ``input_tokens`` excludes what the prompt cache read or wrote."""
    return {
        "input_tokens": s.prompt_tokens - s.cached_tokens - s.cache_write_tokens,
        "cache_creation_input_tokens": s.cache_write_tokens,
        "cache_read_input_tokens": s.cached_tokens,
        "cache_creation": {
            "ephemeral_5m_input_tokens": s.cache_write_tokens - s.cache_write_1h_tokens,
            "ephemeral_1h_input_tokens": s.cache_write_1h_tokens,
        },
    }


def _input_counts(s: Script) -> str:
    """:func:`_input_usage` as the members of a JSON object, for the hand-built stream events."""
    return json.dumps(_input_usage(s), separators=(",", ":"))[1:-1]


def _body(kind: str, message: str, rid: str) -> bytes:
    payload = {"type": "error", "error": {"type": kind, "message": message}, "request_id": rid}
    return json.dumps(payload, separators=(",", ":")).encode()


def _event(name: str, data: str | bytes) -> bytes:
    raw = data.encode() if isinstance(data, str) else data
    return b"event: " + name.encode() + b"\ndata: " + raw + b"\n\n"


class AnthropicProtocol(Protocol):
    name = "anthropic"
    path = "/v1/messages"
    stream_content_type = "text/event-stream; charset=utf-8"
    midstream_fault = Fault("529")

    required_headers = ("anthropic-version",)

    def parse(self, payload: dict[str, Any]) -> ParsedRequest:
        if not payload.get("model"):
            raise RequestError("model: Field required")
        if "max_tokens" not in payload:
            raise RequestError("max_tokens: Field required")
        messages = payload.get("messages")
        if not isinstance(messages, list):
            raise RequestError("messages: Field required")
        if not messages:
            raise RequestError("messages: at least one message is required")
        parts = [content_text(payload.get("system"))] if payload.get("system") else []
        parts += [content_text(m.get("content")) for m in messages if isinstance(m, dict)]
        tools = [
            ToolSpec(t["name"], t.get("input_schema"))
            for t in payload.get("tools") or []
            if isinstance(t, dict) and isinstance(t.get("name"), str)
        ]
        max_tokens = positive_int(payload["max_tokens"], "max_tokens")
        params = anthropic_params(payload, [t.name for t in tools], max_tokens)
        _check_tool_use_ids(messages)
        if params.thinking:
            _check_thinking_turn(messages)
        blocks = anthropic_blocks(payload)
        problem = breakpoint_problem(blocks)
        if problem is not None:  # as the API refuses them
            raise RequestError(problem)
        return ParsedRequest(
            model=str(payload["model"]),
            prompt_text=" ".join(parts),
            max_tokens=max_tokens,
            stream=bool(payload.get("stream")),
            tools=tools,
            message_count=len(messages),
            tool_results=_trailing_tool_results(messages),
            params=params,
            cache_blocks=blocks,
        )

    def _reply(self, status: int, kind: str, message: str, extra: list[tuple[str, str]] | None = None) -> Reply:
        rid = request_id("req_sim")
        retry = status in (408, 409, 429) or status >= 500
        headers = [("request-id", rid), ("x-should-retry", "true" if retry else "false"), *(extra or [])]
        return status, headers, _body(kind, message, rid)

    def invalid(self, err: RequestError) -> Reply:
        return self._reply(err.status, err.kind, err.message)

    def error(self, fault: Fault, req: ParsedRequest) -> Reply:
        kind = fault.kind
        if kind == "context":
            used = max(self.prompt_tokens(req), 200_001)
            return self._reply(400, "invalid_request_error", f"prompt is too long: {used} tokens > 200000 maximum")
        if kind == "404":
            return self._reply(404, "not_found_error", f"model: {req.base_model}")
        if kind in ("429", "429ms"):
            status, etype, message = _ERRORS["429"]
            if kind == "429":
                wait = fault.arg if fault.arg is not None else 1.0
                extra = [("retry-after", str(int(wait)))]
            else:  # not sent by the real API; the official SDKs read it, so it makes fast retry tests possible
                ms = fault.arg if fault.arg is not None else 500.0
                wait = ms / 1000
                extra = [("retry-after-ms", str(int(ms))), ("retry-after", str(math.ceil(wait)))]
            reset = datetime.fromtimestamp(time.time() + wait, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            extra += [
                ("anthropic-ratelimit-requests-limit", "50"),
                ("anthropic-ratelimit-requests-remaining", "0"),
                ("anthropic-ratelimit-requests-reset", reset),
            ]
            return self._reply(status, etype, message, extra)
        if kind in _ERRORS:
            return self._reply(*_ERRORS[kind])
        status = int(kind)
        return self._reply(
            status, "api_error" if status >= 500 else "invalid_request_error", f"Simulated HTTP {status}"
        )

    def success_headers(self) -> list[tuple[str, str]]:
        return [("request-id", request_id("req_sim"))]

    def complete_body(self, req: ParsedRequest, script: Script, usage: bool) -> bytes:
        content: list[dict[str, object]] = []
        if script.thinking:
            content.append({"type": "thinking", "thinking": script.thinking, "signature": signature(script.thinking)})
        if script.tokens:
            content.append({"type": "text", "text": script.text})
        content += [
            {"type": "tool_use", "id": _tool_id(i), "name": c.name, "input": c.arguments}
            for i, c in enumerate(script.tool_calls)
        ]
        body = {
            "model": req.base_model,
            "id": _message_id(),
            "type": "message",
            "role": "assistant",
            "content": content,
            "stop_reason": _FINISH[script.finish],
            "stop_sequence": None,
            "usage": {
                **_input_usage(script),
                "output_tokens": script.completion_tokens,
                "service_tier": "standard",
            },
        }
        return json.dumps(body, separators=(",", ":")).encode()

    def open_stream(self, req: ParsedRequest, script: Script) -> StreamRenderer:
        return _AnthropicStream(req, script)


def _token_pre(index: int) -> bytes:
    return (
        b'event: content_block_delta\ndata: {"type":"content_block_delta","index":%d,"delta":{"type":"text_delta","text":'
        % index
    )


_TOKEN_PRE = _token_pre(0)
_TOKEN_PRE_AFTER_THINKING = _token_pre(1)
_TOKEN_POST = b"}}\n\n"
_PING = b'event: ping\ndata: {"type": "ping"}\n\n'


class _AnthropicStream(StreamRenderer):
    __slots__ = ("_model", "_next_index", "_pre", "_script", "_text_index", "_text_open")

    def __init__(self, req: ParsedRequest, script: Script) -> None:
        self._model = req.base_model
        self._script = script
        self._text_open = False
        self._next_index = 0
        self._text_index = 1 if script.thinking else 0
        self._pre = _TOKEN_PRE_AFTER_THINKING if script.thinking else _TOKEN_PRE

    def head(self) -> bytes:
        s = self._script
        start = (
            f'{{"type":"message_start","message":{{"model":{json.dumps(self._model)},"id":"{_message_id()}",'
            f'"type":"message","role":"assistant","content":[],"stop_reason":null,"stop_sequence":null,'
            f'"usage":{{{_input_counts(s)},"output_tokens":1,"service_tier":"standard"}}}}}}'
        )
        out = _event("message_start", start)
        if s.thinking:
            out += _thinking_events(s.thinking)
            self._next_index = 1
        if s.tokens:
            self._text_open = True
            self._next_index = self._text_index + 1
            block = f'{{"type":"content_block_start","index":{self._text_index},"content_block":{{"type":"text","text":""}}}}'
            out += _event("content_block_start", block)
        return out + _PING

    def token(self, text: str) -> bytes:
        return self._pre + jstr(text) + _TOKEN_POST

    def _close_text(self) -> bytes:
        if not self._text_open:
            return b""
        self._text_open = False
        return _event("content_block_stop", f'{{"type":"content_block_stop","index":{self._text_index}}}')

    def tool_calls(self, calls: list[ToolCall]) -> bytes:
        out = [self._close_text()]
        for i, call in enumerate(calls):
            index = self._next_index
            self._next_index += 1
            block = {"type": "tool_use", "id": _tool_id(i), "name": call.name, "input": {}}
            out.append(
                _event(
                    "content_block_start",
                    json.dumps({"type": "content_block_start", "index": index, "content_block": block}),
                )
            )
            args = json.dumps(call.arguments) if call.arguments else ""
            third = max(1, len(args) // 3)
            pieces = ["", *(args[j : j + third] for j in range(0, len(args), third))]
            for piece in pieces:
                delta = {
                    "type": "content_block_delta",
                    "index": index,
                    "delta": {"type": "input_json_delta", "partial_json": piece},
                }
                out.append(_event("content_block_delta", json.dumps(delta)))
            out.append(_event("content_block_stop", f'{{"type":"content_block_stop","index":{index}}}'))
        return b"".join(out)

    def tail(self, usage: bool) -> bytes:
        s = self._script
        # output_tokens is required by the format: ``nousage`` drops only the optional input/cache counts
        counts = f"{_input_counts(s)}," if usage else ""
        counts = f',"usage":{{{counts}"output_tokens":{s.completion_tokens}}}'
        finish = _FINISH[s.finish]
        delta = f'{{"type":"message_delta","delta":{{"stop_reason":"{finish}","stop_sequence":null}}{counts}}}'
        return self._close_text() + _event("message_delta", delta) + _event("message_stop", '{"type":"message_stop"}')

    def error(self) -> bytes:
        return _event(
            "error", '{"type":"error","error":{"details":null,"type":"overloaded_error","message":"Overloaded"}}'
        )

    def malformed(self) -> bytes:
        return _TOKEN_PRE + b'"bro\n\n'


def signature(thinking: str) -> str:
    """The simulator's signature of a thinking text (the real one is opaque and verified the same way)."""
    return base64.b64encode(hashlib.sha256(b"llmq-sim-thinking:" + thinking.encode()).digest()).decode()


def _thinking_events(thinking: str) -> bytes:
    """A streamed thinking block at index 0: start, text in two deltas, the signature, stop."""
    half = len(thinking) // 2
    out = [
        _event(
            "content_block_start",
            '{"type":"content_block_start","index":0,"content_block":{"type":"thinking","thinking":"","signature":""}}',
        )
    ]
    for piece in (thinking[:half], thinking[half:]):
        delta = {"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": piece}}
        out.append(_event("content_block_delta", json.dumps(delta)))
    sig = {
        "type": "content_block_delta",
        "index": 0,
        "delta": {"type": "signature_delta", "signature": signature(thinking)},
    }
    out.append(_event("content_block_delta", json.dumps(sig)))
    out.append(_event("content_block_stop", '{"type":"content_block_stop","index":0}'))
    return b"".join(out)


def _check_tool_use_ids(messages: list[object]) -> None:
    """A conversation repeating a ``tool_use`` id is refused, with the real API's wording."""
    seen: set[object] = set()
    for position, message in enumerate(messages):
        content = message.get("content") if isinstance(message, dict) else None
        for i, block in enumerate(content if isinstance(content, list) else []):
            if isinstance(block, dict) and block.get("type") == "tool_use":
                if block.get("id") in seen:
                    raise RequestError(f"messages.{position}.content.{i}: `tool_use` ids must be unique")
                seen.add(block.get("id"))


def _check_thinking_turn(messages: list[object]) -> None:
    """With thinking on, a turn of tool results needs the assistant turn before it to start with
    its thinking block, sent back unchanged (what the real API checks, with its wording)."""
    if len(messages) < 2 or not _trailing_tool_results(messages):
        return
    position = len(messages) - 2
    assistant = messages[position]
    if not isinstance(assistant, dict) or assistant.get("role") != "assistant":
        return
    content = assistant.get("content")
    first = content[0] if isinstance(content, list) and content else None
    kind = first.get("type") if isinstance(first, dict) else "text"
    if not isinstance(first, dict) or kind not in ("thinking", "redacted_thinking"):
        raise RequestError(
            f"messages.{position}.content.0.type: Expected `thinking` or `redacted_thinking`, but found `{kind}`. "
            "When `thinking` is enabled, a final `assistant` message must start with a thinking block "
            "(preceeding the lastmost set of `tool_use` and `tool_result` blocks). We recommend you include "
            "thinking blocks from previous turns. To avoid this requirement, disable `thinking`. Please consult "
            "our documentation at https://docs.claude.com/en/docs/build-with-claude/extended-thinking"
        )
    for i, block in enumerate(content if isinstance(content, list) else []):
        if not isinstance(block, dict):
            continue
        if block.get("type") == "thinking":
            text = block.get("thinking")
            if not isinstance(text, str) or block.get("signature") != signature(text):
                raise RequestError(f"messages.{position}.content.{i}: Invalid `signature` in `thinking` block")
        elif block.get("type") == "redacted_thinking" and not (isinstance(block.get("data"), str) and block["data"]):
            raise RequestError(f"messages.{position}.content.{i}.data: Field required")


def _message_id() -> str:
    return "msg_" + request_id("sim")


def _tool_id(i: int) -> str:
    return f"toolu_sim{i:02d}" + request_id("")


def _trailing_tool_results(messages: list[object]) -> list[str]:
    """The ``tool_result`` blocks of the last message, when it is a user turn answering tool calls."""
    last = messages[-1] if messages else None
    if not isinstance(last, dict) or last.get("role") != "user" or not isinstance(last.get("content"), list):
        return []
    return [
        content_text(b.get("content"))
        for b in last["content"]
        if isinstance(b, dict) and b.get("type") == "tool_result"
    ]

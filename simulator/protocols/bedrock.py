"""AWS Bedrock Converse as the simulator speaks it: ``POST /model/{modelId}/converse`` and
``/converse-stream`` (the binary ``application/vnd.amazon.eventstream`` framing).

Each stream frame is a prelude (total and header lengths, CRC32), string headers
(``:event-type``, ``:content-type``, ``:message-type``), a JSON payload with a ``p`` padding field
and a message CRC32. Events: ``messageStart``, ``contentBlockStart`` (tool use only),
``contentBlockDelta`` (text, or tool input as JSON string pieces), ``contentBlockStop``,
``messageStop`` (``stopReason``), ``metadata`` (usage, after the stop). Errors are ``{"message"}``
typed by the ``x-amzn-ErrorType`` header; in a stream, an exception frame. A request must be
signed (``authorization: AWS4-HMAC-SHA256 ...``) or carry a Bedrock API key (bearer); the
simulator does not check the signature itself.
"""

from __future__ import annotations

import json
import re
import struct
import zlib
from collections.abc import Mapping
from itertools import pairwise
from typing import Any
from urllib.parse import unquote

from simulator.promptcache import ANTHROPIC_TTL_S, CacheBlock, blocks_of, breakpoint_problem
from simulator.protocols.base import (
    ParsedRequest,
    Protocol,
    Reply,
    RequestError,
    StreamRenderer,
    ToolSpec,
    positive_int,
    request_id,
)
from simulator.request import RequestParams
from simulator.script import Fault, Script, ToolCall, estimate_tokens
from simulator.structured import stop_sequences

__all__ = ["BedrockProtocol", "frame"]

_PATH = re.compile(r"^/model/([^/]+)/(converse|converse-stream)$")
_SUFFIX = ":http://internal.amazon.com/coral/com.amazon.bedrock/"
_ERRORS: dict[str, tuple[int, str, str]] = {
    "429": (429, "ThrottlingException", "Too many requests, please wait before trying again."),
    "429ms": (429, "ThrottlingException", "Too many tokens, please wait before trying again."),
    "quota": (400, "ServiceQuotaExceededException", "Your request exceeds the service quota for your account."),
    "context": (400, "ValidationException", "Input is too long for requested model."),
    "400": (400, "ValidationException", "Malformed input request, please reformat your input and try again."),
    "401": (403, "UnrecognizedClientException", "The security token included in the request is invalid."),
    "403": (403, "AccessDeniedException", "You don't have access to the model with the specified model ID."),
    "404": (
        404,
        "ResourceNotFoundException",
        "Could not resolve the foundation model from the provided model identifier.",
    ),
    "500": (500, "InternalServerException", "The server encountered an internal error."),
    "502": (502, "InternalServerException", "Bad gateway."),
    "503": (503, "ServiceUnavailableException", "Bedrock is unable to process your request."),
    "529": (429, "ModelNotReadyException", "The model is not ready to serve inference requests."),
}
_STOP = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool": "tool_use",
    "refusal": "end_turn",
    "filter": "content_filtered",
}
_PAD = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"


def frame(headers: Mapping[str, str], payload: bytes) -> bytes:
    """One event-stream frame: prelude + its CRC, string headers, payload, message CRC."""
    raw = b"".join(
        bytes([len(k)]) + k.encode() + b"\x07" + struct.pack(">H", len(v.encode())) + v.encode()
        for k, v in headers.items()
    )
    prelude = struct.pack(">II", 12 + len(raw) + len(payload) + 4, len(raw))
    message = prelude + struct.pack(">I", zlib.crc32(prelude)) + raw + payload
    return message + struct.pack(">I", zlib.crc32(message))


def _event(kind: str, payload: dict[str, object], pad: int = 0) -> bytes:
    body = {**payload, "p": _PAD[: 5 + pad % 40]}
    headers = {":event-type": kind, ":content-type": "application/json", ":message-type": "event"}
    return frame(headers, json.dumps(body, separators=(",", ":")).encode())


def _exception(kind: str, message: str) -> bytes:
    headers = {":exception-type": kind, ":content-type": "application/json", ":message-type": "exception"}
    return frame(headers, json.dumps({"message": message}).encode())


def _text(blocks: object) -> str:
    out = []
    for block in blocks if isinstance(blocks, list) else []:
        if isinstance(block, dict):
            if isinstance(block.get("text"), str):
                out.append(block["text"])
            elif isinstance(block.get("toolResult"), dict):
                out.append(_text(block["toolResult"].get("content")))
            elif isinstance(block.get("toolUse"), dict):
                out.append(json.dumps(block["toolUse"].get("input")))
    return " ".join(out)


def bedrock_blocks(payload: dict[str, Any]) -> list[CacheBlock]:
    """A Converse request's boundaries in cache order (tools, system, each message's blocks); a
    ``cachePoint`` block makes the block before it a breakpoint (``ttl`` ``5m`` or ``1h``). Claude
    on Bedrock caches by Anthropic's rules, which the caller applies."""
    items: list[tuple[object, int, float | None]] = []

    def add(blocks: object, role: object = None) -> None:
        for i, block in enumerate(blocks if isinstance(blocks, list) else []):
            point = block.get("cachePoint") if isinstance(block, dict) else None
            if isinstance(point, dict):
                if items:
                    ttl = ANTHROPIC_TTL_S.get(str(point.get("ttl", "5m")), ANTHROPIC_TTL_S["5m"])
                    items[-1] = (items[-1][0], items[-1][1], ttl)
                continue
            tokens = estimate_tokens(_text([block])) + (3 if i == 0 and role is not None else 0)
            items.append(((role, block), tokens, None))

    add((payload.get("toolConfig") or {}).get("tools"))
    add(payload.get("system"))
    for message in payload.get("messages") or []:
        if isinstance(message, dict):
            add(message.get("content"), message.get("role"))
    return blocks_of(items)


def _tool_use_id(i: int) -> str:
    """A toolUse id: unique in any conversation, as the real API's are."""
    return f"tooluse_sim{i}" + request_id("_")


class BedrockProtocol(Protocol):
    name = "bedrock"
    path = "/model/{modelId}/converse"
    stream_content_type = "application/vnd.amazon.eventstream"

    def route(self, path: str) -> dict[str, str] | None:
        match = _PATH.match(path)
        return None if match is None else {"model": unquote(match.group(1)), "method": match.group(2)}

    def check(self, headers: Mapping[str, str]) -> None:
        auth = headers.get("authorization") or ""
        if not auth.startswith(("AWS4-HMAC-SHA256 ", "Bearer ")):
            raise RequestError("Missing Authentication Token", status=403, kind="MissingAuthenticationTokenException")

    def parse(self, payload: dict[str, Any]) -> ParsedRequest:
        raise RequestError("use /model/{modelId}/converse")

    def parse_routed(self, payload: dict[str, Any], route: dict[str, str], query: dict[str, str]) -> ParsedRequest:
        messages = payload.get("messages")
        if not isinstance(messages, list) or not messages:
            raise RequestError(
                "A conversation must start with a user message. Try again with a conversation that starts with a user message."
            )
        roles = [m.get("role") if isinstance(m, dict) else None for m in messages]
        if roles[0] != "user" or any(a == b for a, b in pairwise(roles)):
            raise RequestError("A conversation must alternate between user and assistant roles.")
        if not payload.get("toolConfig") and any(
            isinstance(b, dict) and ("toolUse" in b or "toolResult" in b)
            for m in messages
            if isinstance(m, dict)
            for b in m.get("content") or []
        ):
            raise RequestError("The toolConfig field must be defined when using toolUse and toolResult content blocks.")
        config = payload.get("inferenceConfig") or {}
        limit = config.get("maxTokens")
        specs = [t.get("toolSpec") for t in (payload.get("toolConfig") or {}).get("tools") or [] if isinstance(t, dict)]
        tools = [
            ToolSpec(s["name"], (s.get("inputSchema") or {}).get("json"))
            for s in specs
            if isinstance(s, dict) and s.get("name")
        ]
        params = RequestParams(stop=stop_sequences(config.get("stopSequences"), "stopSequences", 4))
        choice = (payload.get("toolConfig") or {}).get("toolChoice") or {}
        if "any" in choice:
            params.tool_required = "*"
        elif isinstance(choice.get("tool"), dict):
            params.tool_required = choice["tool"].get("name")
        fmt = ((payload.get("outputConfig") or {}).get("textFormat") or {}).get("structure") or {}
        if isinstance(fmt.get("jsonSchema"), dict):
            params.schema = json.loads(fmt["jsonSchema"].get("schema") or "{}")
        thinking = (payload.get("additionalModelRequestFields") or {}).get("thinking")
        params.thinking = isinstance(thinking, dict) and thinking.get("type") == "enabled"
        last = messages[-1].get("content") or []
        results = [
            _text(b["toolResult"].get("content"))
            for b in last
            if isinstance(b, dict) and isinstance(b.get("toolResult"), dict)
        ]
        blocks = bedrock_blocks(payload)
        problem = breakpoint_problem(blocks)
        if problem is not None:
            raise RequestError(problem.replace("cache_control", "cachePoint"))
        text = " ".join([_text(payload.get("system")), *(_text(m.get("content")) for m in messages)])
        return ParsedRequest(
            model=route["model"],
            prompt_text=text.strip(),
            max_tokens=None if limit is None else positive_int(limit, "inferenceConfig.maxTokens"),
            stream=route["method"] == "converse-stream",
            tools=tools,
            message_count=len(messages),
            tool_results=results,
            params=params,
            cache_blocks=blocks,
        )

    def invalid(self, err: RequestError) -> Reply:
        kind = err.kind if err.kind.endswith("Exception") else "ValidationException"
        return err.status, self._error_headers(kind), json.dumps({"message": err.message}).encode()

    @staticmethod
    def _error_headers(kind: str) -> list[tuple[str, str]]:
        return [("x-amzn-RequestId", request_id("brsim-")), ("x-amzn-ErrorType", kind + _SUFFIX)]

    def error(self, fault: Fault, req: ParsedRequest) -> Reply:
        status, kind, message = _ERRORS.get(fault.kind) or (
            int(fault.kind),
            "InternalServerException",
            f"Simulated HTTP {fault.kind}.",
        )
        return status, self._error_headers(kind), json.dumps({"message": message}).encode()

    def success_headers(self) -> list[tuple[str, str]]:
        return [("x-amzn-RequestId", request_id("brsim-"))]

    def complete_body(self, req: ParsedRequest, script: Script, usage: bool) -> bytes:
        content: list[dict[str, object]] = []
        if script.thinking:
            content.append(
                {"reasoningContent": {"reasoningText": {"text": script.thinking, "signature": "c2ltLXNpZw=="}}}
            )
        if script.text:
            content.append({"text": script.text})
        content += [
            {"toolUse": {"toolUseId": _tool_use_id(i), "name": c.name, "input": c.arguments}}
            for i, c in enumerate(script.tool_calls)
        ]
        body: dict[str, object] = {
            "metrics": {"latencyMs": 1},
            "output": {"message": {"content": content, "role": "assistant"}},
            "stopReason": _STOP[script.finish],
        }
        if usage:
            body["usage"] = _usage(script)
        return json.dumps(body, separators=(",", ":")).encode()

    def open_stream(self, req: ParsedRequest, script: Script) -> StreamRenderer:
        return _BedrockStream(script)


def _usage(script: Script) -> dict[str, object]:
    cached, written = script.cached_tokens, script.cache_write_tokens
    out: dict[str, object] = {
        "inputTokens": script.prompt_tokens - cached - written,
        "outputTokens": script.completion_tokens,
        "totalTokens": script.prompt_tokens + script.completion_tokens,
    }
    if cached:
        out["cacheReadInputTokens"] = cached
    if written:
        out["cacheWriteInputTokens"] = written
        long = script.cache_write_1h_tokens
        details = [{"ttl": "1h", "inputTokens": long}] if long else []
        out["cacheDetails"] = [*details, {"ttl": "5m", "inputTokens": written - long}] if written > long else details
    return out


class _BedrockStream(StreamRenderer):
    __slots__ = ("_block", "_n", "_script", "_text_open")

    def __init__(self, script: Script) -> None:
        self._script = script
        self._n = 0
        self._block = 0
        self._text_open = False

    def head(self) -> bytes:
        out = _event("messageStart", {"role": "assistant"})
        if self._script.thinking:
            delta = {"reasoningContent": {"text": self._script.thinking}}
            signature = {"reasoningContent": {"signature": "c2ltLXNpZw=="}}
            out += _event("contentBlockDelta", {"contentBlockIndex": 0, "delta": delta})
            out += _event("contentBlockDelta", {"contentBlockIndex": 0, "delta": signature})
            out += _event("contentBlockStop", {"contentBlockIndex": 0})
            self._block = 1
        return out

    def token(self, text: str) -> bytes:
        self._n += 1
        self._text_open = True
        return _event("contentBlockDelta", {"contentBlockIndex": self._block, "delta": {"text": text}}, self._n)

    def _close_text(self) -> bytes:
        if not self._text_open:
            return b""
        self._text_open = False
        out = _event("contentBlockStop", {"contentBlockIndex": self._block})
        self._block += 1
        return out

    def tool_calls(self, calls: list[ToolCall]) -> bytes:
        out = [self._close_text()]
        for i, call in enumerate(calls):
            index = self._block
            start = {"toolUse": {"toolUseId": _tool_use_id(i), "name": call.name}}
            out.append(_event("contentBlockStart", {"contentBlockIndex": index, "start": start}))
            args = call.arguments_json
            half = len(args) // 2
            for piece in (args[:half], args[half:]):
                if piece:
                    out.append(
                        _event(
                            "contentBlockDelta", {"contentBlockIndex": index, "delta": {"toolUse": {"input": piece}}}
                        )
                    )
            out.append(_event("contentBlockStop", {"contentBlockIndex": index}))
            self._block += 1
        return b"".join(out)

    def tail(self, usage: bool) -> bytes:
        out = self._close_text() + _event("messageStop", {"stopReason": _STOP[self._script.finish]})
        metadata: dict[str, object] = {"metrics": {"latencyMs": 1}}
        if usage:
            metadata["usage"] = _usage(self._script)
        return out + _event("metadata", metadata)

    def error(self) -> bytes:
        return _exception("serviceUnavailableException", "Bedrock is unable to process your request.")

    def malformed(self) -> bytes:
        broken = bytearray(_event("contentBlockDelta", {"contentBlockIndex": self._block, "delta": {"text": "bro"}}))
        broken[-1] ^= 0xFF  # the message CRC no longer matches
        return bytes(broken)

"""What a simulated wire protocol must provide: parse a request, render answers and errors.

Streams are rendered by a per-request :class:`StreamRenderer` built once per stream, so that
everything constant (ids, model name, JSON around a text delta) is encoded once and the per-token
path is a few byte concatenations (see :func:`jstr`).
"""

from __future__ import annotations

import itertools
import json
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from functools import lru_cache
from typing import Any

from simulator.request import ParsedRequest, RequestError, ToolSpec
from simulator.script import Fault, Script, ToolCall, estimate_tokens

__all__ = ["ParsedRequest", "Protocol", "Reply", "RequestError", "StreamRenderer", "ToolSpec", "jstr", "request_id"]

#: status, headers, body
Reply = tuple[int, list[tuple[str, str]], bytes]

_ids = itertools.count(1)


def request_id(prefix: str = "req_sim_") -> str:
    return f"{prefix}{next(_ids):012d}"


@lru_cache(maxsize=8192)
def jstr(text: str) -> bytes:
    """A JSON string literal, cached: the simulator's tokens come from a small vocabulary."""
    return json.dumps(text, ensure_ascii=False).encode()


class StreamRenderer(ABC):
    """Bytes of one streamed answer, in order: head, tokens, tool calls, tail (or error)."""

    __slots__ = ()

    @abstractmethod
    def head(self) -> bytes: ...

    @abstractmethod
    def token(self, text: str) -> bytes: ...

    def tokens(self, texts: Iterable[str]) -> bytes:
        return b"".join(map(self.token, texts))

    @abstractmethod
    def tool_calls(self, calls: list[ToolCall]) -> bytes: ...

    @abstractmethod
    def tail(self, usage: bool) -> bytes:
        """Finish reason, usage (unless ``usage`` is false) and the protocol's terminator."""

    @abstractmethod
    def error(self) -> bytes:
        """An error payload inside a 200 stream (the stream ends after it)."""

    @abstractmethod
    def malformed(self) -> bytes:
        """A broken line: framing intact, payload not parseable."""


class Protocol(ABC):
    #: ``openai``, ``anthropic``, ``ollama``.
    name: str
    #: Request path served, e.g. ``/v1/chat/completions``.
    path: str
    #: ``text/event-stream`` or ``application/x-ndjson``.
    stream_content_type: str
    content_type: str = "application/json"
    #: The HTTP error a *non-stream* request gets for the ``midstream`` fault.
    midstream_fault: Fault = Fault("500")

    #: Headers the real API insists on (400 without them).
    required_headers: tuple[str, ...] = ()

    def route(self, path: str) -> dict[str, str] | None:
        """For a protocol whose paths carry the model (Gemini, Bedrock, Azure deployments): what
        ``path`` says (``model``, ``method``...), or None when it is not one of its paths."""
        return None

    def parse_routed(self, payload: dict[str, Any], route: dict[str, str], query: dict[str, str]) -> ParsedRequest:
        """Read a request that came in on a :meth:`route` path (default: the body says it all)."""
        return self.parse(payload)

    def check(self, headers: Mapping[str, str]) -> None:
        """Reject requests the real API rejects for their headers (raise :class:`RequestError`)."""
        for name in self.required_headers:
            if not headers.get(name):
                raise RequestError(f"{name}: header is required")

    @abstractmethod
    def parse(self, payload: dict[str, Any]) -> ParsedRequest:
        """Read a request body; raise :class:`RequestError` (or ``ValueError``) when invalid."""

    @abstractmethod
    def invalid(self, err: RequestError) -> Reply:
        """The API's answer to an invalid request."""

    @abstractmethod
    def error(self, fault: Fault, req: ParsedRequest) -> Reply:
        """An HTTP error response for a fault."""

    def success_headers(self) -> list[tuple[str, str]]:
        return []

    @abstractmethod
    def complete_body(self, req: ParsedRequest, script: Script, usage: bool) -> bytes: ...

    @abstractmethod
    def open_stream(self, req: ParsedRequest, script: Script) -> StreamRenderer: ...

    def prompt_tokens(self, req: ParsedRequest) -> int:
        # an image costs what OpenAI charges for a 512x512 high-detail one (85 + 170)
        return estimate_tokens(req.prompt_text) + 3 * req.message_count + 3 + 255 * req.params.images


def content_text(content: object) -> str:
    """Text of a message ``content``: a string, or a list of blocks/parts with text in them."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for block in content:
            if isinstance(block, dict):
                text = block.get("text")
                if isinstance(text, str):
                    parts.append(text)
                elif "content" in block:  # tool results
                    parts.append(content_text(block["content"]))
                elif "input" in block:  # tool use
                    parts.append(json.dumps(block["input"]))
            elif isinstance(block, str):
                parts.append(block)
        return " ".join(parts)
    return "" if content is None else str(content)


def trailing_tool_results(messages: list[object], role: str = "tool") -> list[str]:
    """Contents of the ``role`` messages at the end of an OpenAI/Ollama-style message list."""
    out: list[str] = []
    for m in reversed(messages):
        if not isinstance(m, dict) or m.get("role") != role:
            break
        out.append(content_text(m.get("content")))
    return out[::-1]


def positive_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise RequestError(f"{name}: must be a positive integer")
    return value

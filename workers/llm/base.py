"""The provider abstraction: one request type, ``complete()`` and ``stream()``.

A provider module only translates our contract into its wire format and back. Everything that
cuts across providers (retries, fallback, rate limits, metrics) wraps a :class:`Provider` from the
outside; no provider branches live in shared code.

``stream()`` returns a :class:`ChatStream`: iterating it yields text deltas as ``str`` (the hot
path allocates nothing else per chunk), while tool calls, usage, the finish reason and thinking
text accumulate on the stream object. A stream that ends without the provider's terminator raises
:class:`~workers.llm.errors.IncompleteStreamError`; it is never a success. Closing the stream
(explicitly, via ``with``, or by the consumer stopping early) always closes the HTTP response.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from types import TracebackType

from workers.contract import FunctionCall, Message, Tool, ToolCall, Usage

__all__ = [
    "ChatRequest",
    "ChatStream",
    "Completion",
    "Provider",
    "ProviderFactory",
    "ToolCallAccumulator",
    "iter_lines",
    "iter_sse",
]


@dataclass(slots=True)
class ChatRequest:
    """A provider-neutral chat request. ``model`` is the provider's own model name."""

    model: str
    messages: list[Message]
    max_tokens: int
    tools: list[Tool] = field(default_factory=list)
    temperature: float | None = None
    #: Opaque per-request headers for the upstream (the simulator's fault selector, tracing).
    extra_headers: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class Completion:
    text: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)
    finish_reason: str | None = None
    usage: Usage | None = None
    thinking: str = ""
    refusal: str | None = None
    response_model: str | None = None
    request_id: str | None = None


class ChatStream(ABC):
    """An open streaming response. Iterate for text deltas; read the rest afterwards."""

    def __init__(self) -> None:
        self.text_parts: list[str] = []
        self.tool_calls: list[ToolCall] = []
        self.usage: Usage | None = None
        self.finish_reason: str | None = None
        self.thinking: str = ""
        self.refusal: str | None = None
        self.response_model: str | None = None
        self.request_id: str | None = None
        self.completed = False

    @abstractmethod
    def __iter__(self) -> Iterator[str]: ...

    @abstractmethod
    def close(self) -> None: ...

    @property
    def text(self) -> str:
        return "".join(self.text_parts)

    def to_completion(self) -> Completion:
        return Completion(
            text=self.text,
            tool_calls=self.tool_calls,
            finish_reason=self.finish_reason,
            usage=self.usage,
            thinking=self.thinking,
            refusal=self.refusal,
            response_model=self.response_model,
            request_id=self.request_id,
        )

    def __enter__(self) -> ChatStream:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class Provider(ABC):
    """One upstream API (OpenAI, Anthropic, Ollama, ...)."""

    #: The provider prefix in model ids, e.g. ``"openai"``.
    name: str

    @abstractmethod
    def complete(self, request: ChatRequest) -> Completion: ...

    @abstractmethod
    def stream(self, request: ChatRequest) -> ChatStream: ...

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release what the provider holds (it does not own the shared HTTP client)."""


#: Builds a provider from the worker's environment; registered per provider name.
ProviderFactory = Callable[..., Provider]


class ToolCallAccumulator:
    """Assembles streamed tool-call fragments by index; arguments may arrive in many pieces."""

    __slots__ = ("_calls",)

    def __init__(self) -> None:
        self._calls: dict[int, list[str]] = {}

    def start(self, index: int, call_id: str | None, name: str | None) -> None:
        slot = self._calls.get(index)
        if slot is None:
            self._calls[index] = [call_id or "", name or "", ""]
            return
        if call_id and not slot[0]:
            slot[0] = call_id
        if name and not slot[1]:
            slot[1] = name

    def add_arguments(self, index: int, fragment: str) -> None:
        slot = self._calls.get(index)
        if slot is None:
            slot = self._calls[index] = ["", "", ""]
        slot[2] += fragment

    def __bool__(self) -> bool:
        return bool(self._calls)

    def build(self, id_prefix: str = "call_") -> list[ToolCall]:
        calls = []
        for index in sorted(self._calls):
            call_id, name, args = self._calls[index]
            calls.append(
                ToolCall(
                    id=call_id or f"{id_prefix}{index}",
                    function=FunctionCall(name=name or "unknown", arguments=normalize_arguments(args)),
                )
            )
        return calls


def normalize_arguments(raw: str | dict[str, object] | None) -> str:
    """Arguments as a JSON object string; an empty stream of fragments means ``{}``."""
    if raw is None:
        return "{}"
    if isinstance(raw, dict):
        return json.dumps(raw, separators=(",", ":"), ensure_ascii=False)
    return raw if raw.strip() else "{}"


def iter_lines(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """Split a byte stream into lines (``\\n``-terminated; a trailing ``\\r`` is stripped).

    A final line without a newline is still yielded. Kept deliberately small: this is the
    innermost loop of every stream we read.
    """
    buf = b""
    for chunk in chunks:
        if buf:
            chunk = buf + chunk
        lines = chunk.split(b"\n")
        buf = lines.pop()
        for line in lines:
            if line.endswith(b"\r"):
                line = line[:-1]
            yield line
    if buf:
        yield buf[:-1] if buf.endswith(b"\r") else buf


def iter_sse(chunks: Iterable[bytes]) -> Iterator[tuple[bytes, bytes]]:
    """Yield ``(event, data)`` pairs of a Server-Sent Events stream.

    Multi-line ``data:`` fields are joined with ``\\n`` as the spec says; comments and ids are
    skipped. An event still pending when the stream ends (no trailing blank line) is yielded.
    """
    event = b""
    data: list[bytes] = []
    for line in iter_lines(chunks):
        if not line:
            if data:
                yield event, data[0] if len(data) == 1 else b"\n".join(data)
            event = b""
            data = []
            continue
        if line.startswith(b"data:"):
            value = line[5:]
            data.append(value[1:] if value.startswith(b" ") else value)
        elif line.startswith(b"event:"):
            event = line[6:].strip()
        # ":" comments, "id:" and "retry:" carry nothing we use
    if data:
        yield event, data[0] if len(data) == 1 else b"\n".join(data)

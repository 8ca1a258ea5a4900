"""The conversation's shapes: OpenAI-style messages (text, image parts, tool calls, tool results),
tool definitions, and the thinking blocks an Anthropic answer carries back."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Literal

from pydantic import Field, JsonValue, model_validator

from workers.contract.base import WireModel
from workers.contract.params import CacheControl, ContentPart, ImagePart, TextPart

__all__ = ["FunctionCall", "Message", "ReasoningBlock", "Tool", "ToolCall", "ToolFunction", "ToolName"]


class FunctionCall(WireModel):
    name: str = Field(min_length=1)
    #: The arguments as a JSON string, exactly as OpenAI sends them.
    arguments: str = "{}"


class ToolCall(WireModel):
    id: str = Field(min_length=1)
    type: Literal["function"] = "function"
    function: FunctionCall


def _empty_object_schema() -> dict[str, JsonValue]:
    return {"type": "object", "properties": {}}


class ToolFunction(WireModel):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    description: str | None = None
    #: JSON Schema of the arguments.
    parameters: dict[str, JsonValue] = Field(default_factory=_empty_object_schema)


class Tool(WireModel):
    type: Literal["function"] = "function"
    function: ToolFunction
    #: A prompt-cache breakpoint after this tool's definition (Anthropic; others ignore it).
    cache_control: CacheControl | None = None


#: A worker tool, named by a string in a job's ``tools`` (registered with ``@tool`` on the workers).
ToolName = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]


class ReasoningBlock(WireModel):
    """A thinking block of an answer, kept to be sent back unchanged when a tool loop continues.

    With thinking on, Anthropic (and Claude on Bedrock) wants the previous assistant turn's
    thinking blocks, verbatim and first in its content: ``thinking`` blocks with their
    ``signature``, ``redacted_thinking`` blocks with their encrypted ``data``. Gemini wants each
    part's ``thoughtSignature`` back on that part: a ``thought_signature`` block, ``data`` naming
    the tool call it belongs to (None: the turn's text). ``provider`` is the type of provider
    that made it (None: Anthropic); other providers never see a block.
    """

    type: Literal["thinking", "redacted_thinking", "thought_signature"]
    #: ``anthropic``, ``bedrock`` or ``gemini``; None for blocks of Anthropic's own API.
    provider: str | None = None
    #: The thinking text (``thinking`` blocks).
    thinking: str | None = None
    #: The provider's signature over the thinking text (``thinking`` blocks).
    signature: str | None = None
    #: The encrypted thinking (``redacted_thinking`` blocks).
    data: str | None = None

    @model_validator(mode="after")
    def _shape(self) -> ReasoningBlock:
        if self.type == "thinking" and (self.thinking is None or not self.signature or self.data is not None):
            raise ValueError("a 'thinking' block needs 'thinking' and 'signature' (and no 'data')")
        if self.type == "redacted_thinking" and (
            not self.data or self.thinking is not None or self.signature is not None
        ):
            raise ValueError("a 'redacted_thinking' block needs 'data' (and no 'thinking' or 'signature')")
        if self.type == "thought_signature" and (not self.signature or self.thinking is not None):
            raise ValueError("a 'thought_signature' block needs 'signature' (and no 'thinking')")
        return self


class Message(WireModel):
    """An OpenAI-style chat message (system, user, assistant with tool calls, tool result)."""

    role: Literal["system", "user", "assistant", "tool"]
    #: Text, or a list of content parts (``text``; ``image_url`` in user messages only).
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None
    #: Assistant messages only: the answer's thinking blocks (Anthropic extended thinking), sent
    #: back first and unchanged when the conversation continues on Anthropic; dropped for others.
    reasoning_blocks: list[ReasoningBlock] | None = None
    #: A prompt-cache breakpoint at the end of this message (Anthropic; others ignore it): the
    #: prompt up to here is cached. On one content part instead: ``TextPart.cache_control``.
    cache_control: CacheControl | None = None

    @model_validator(mode="after")
    def _shape(self) -> Message:
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a 'tool' message needs tool_call_id")
        if self.role != "tool" and self.tool_call_id is not None:
            raise ValueError("tool_call_id is only allowed on 'tool' messages")
        if self.tool_calls and self.role != "assistant":
            raise ValueError("tool_calls are only allowed on 'assistant' messages")
        if self.reasoning_blocks and self.role != "assistant":
            raise ValueError("reasoning_blocks are only allowed on 'assistant' messages")
        if self.content is None and not self.tool_calls:
            raise ValueError(f"a '{self.role}' message needs content")
        if isinstance(self.content, list) and self.role != "user" and self.images:
            raise ValueError(f"image parts are only allowed in 'user' messages, not '{self.role}'")
        return self

    @property
    def text(self) -> str:
        """The message's text: the content string, or its text parts joined."""
        content = self.content
        if content is None or isinstance(content, str):
            return content or ""
        return "".join(p.text for p in content if isinstance(p, TextPart))

    @property
    def images(self) -> list[ImagePart]:
        content = self.content
        return [p for p in content if isinstance(p, ImagePart)] if isinstance(content, list) else []


#: Anthropic's limit of ``cache_control`` breakpoints per request.
MAX_CACHE_BREAKPOINTS = 4


def message_breakpoints(message: Message) -> list[str]:
    """The TTLs of the cache breakpoints on ``message`` (its parts', then its own), in order."""
    marks: list[str] = []
    if isinstance(message.content, list):
        marks = [p.cache_control.ttl for p in message.content if p.cache_control is not None]
    if message.cache_control is not None:
        marks.append(message.cache_control.ttl)
    return marks


def cache_breakpoints(tools: Sequence[Tool], messages: Sequence[Message]) -> list[str]:
    """The TTLs of a request's cache breakpoints in the order a prompt cache reads them: tools,
    then system messages, then the others."""
    marks: list[str] = [t.cache_control.ttl for t in tools if t.cache_control is not None]
    for system in (True, False):
        for m in messages:
            if (m.role == "system") == system:
                marks += message_breakpoints(m)
    return marks

"""What the simulator reads from a request, whichever wire format sent it.

Each protocol's ``parse`` turns its own JSON into a :class:`ParsedRequest` (the parameters beyond
the prompt into its :class:`RequestParams`, with ``simulator/structured.py``'s readers); the app
plans one answer for all of them. Below the protocols and ``simulator.structured``, which both use
these types.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from simulator.script import split_model

__all__ = ["ParsedRequest", "RequestError", "RequestParams", "ToolSpec"]


class RequestError(ValueError):
    """The request is invalid the way the real API would reject it (every protocol raises it;
    ``simulator.protocols.base`` re-exports it)."""

    def __init__(self, message: str, status: int = 400, kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.kind = kind


@dataclass(slots=True)
class RequestParams:
    #: The JSON schema the answer must satisfy (``{"type": "object"}`` for a JSON-object mode).
    schema: object = None
    #: A tool call is forced: ``"*"`` for any tool, else the tool's name.
    tool_required: str | None = None
    stop: list[str] = field(default_factory=list)
    images: int = 0
    #: Anthropic extended thinking is on: the answer starts with a signed thinking block.
    thinking: bool = False
    #: How many answers (OpenAI's ``n``, Gemini's ``candidateCount``): each one the same text.
    answers: int = 1
    #: Log probabilities asked for: None (no), else how many top tokens per position.
    logprobs: int | None = None


@dataclass(frozen=True, slots=True)
class ToolSpec:
    name: str
    schema: object = None


@dataclass(slots=True)
class ParsedRequest:
    #: The model as sent, including any ``~fault`` suffix.
    model: str
    prompt_text: str
    #: ``None`` when the request sets no limit.
    max_tokens: int | None
    stream: bool
    tools: list[ToolSpec] = field(default_factory=list)
    include_usage: bool = True
    message_count: int = 1
    #: Texts of the tool results the request ends with (the answer quotes them).
    tool_results: list[str] = field(default_factory=list)
    #: Response format, forced tool, stop sequences, image count (read by ``simulator/structured.py``).
    params: RequestParams = field(default_factory=RequestParams)

    #: The wire format that sent it (``openai``, ``anthropic``, ``ollama``).
    protocol_name: str = ""
    #: The prompt's block boundaries for the prompt cache (``simulator/promptcache.py``); empty for
    #: a wire format whose provider bills no prompt caching here.
    cache_blocks: list[Any] = field(default_factory=list)

    @property
    def base_model(self) -> str:
        return split_model(self.model)[0]

    @property
    def tool_names(self) -> list[str]:
        return [t.name for t in self.tools]

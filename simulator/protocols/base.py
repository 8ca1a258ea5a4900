"""What a simulated wire protocol must provide: parse a request, render answers and errors."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

from simulator.script import Fault, Script

__all__ = ["ParsedRequest", "Protocol"]


@dataclass(slots=True)
class ParsedRequest:
    model: str
    prompt_text: str
    max_tokens: int
    stream: bool
    tool_names: list[str] = field(default_factory=list)
    include_usage: bool = True
    message_count: int = 1


class Protocol(ABC):
    #: Request path served, e.g. ``/v1/chat/completions``.
    path: str
    #: ``text/event-stream`` or ``application/x-ndjson``.
    stream_content_type: str

    @abstractmethod
    def parse(self, payload: dict) -> ParsedRequest: ...

    @abstractmethod
    def error(self, fault: Fault) -> tuple[int, list[tuple[str, str]], bytes]:
        """An HTTP error response for a fault: status, headers, body."""

    @abstractmethod
    def complete_body(self, req: ParsedRequest, script: Script, finish: str) -> bytes: ...

    @abstractmethod
    def stream_head(self, req: ParsedRequest, script: Script) -> bytes: ...

    @abstractmethod
    def stream_token(self, req: ParsedRequest, token: str) -> bytes: ...

    @abstractmethod
    def stream_tool_call(self, req: ParsedRequest, name: str, arguments: str) -> bytes: ...

    @abstractmethod
    def stream_tail(self, req: ParsedRequest, script: Script, finish: str, usage: bool) -> bytes:
        """Finish reason, usage (when asked and ``usage``) and the terminator."""

    @abstractmethod
    def stream_error(self, req: ParsedRequest, fault: Fault) -> bytes:
        """An error payload inside a 200 stream."""

    def malformed(self) -> bytes:
        return b'data: {"choices": [{"delta": {"content": "bro\n\n'

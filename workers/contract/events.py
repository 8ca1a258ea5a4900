"""Stream events, one JSON object each, ordered by ``seq``."""

from __future__ import annotations

import time
from typing import Annotated, Literal

from pydantic import Field, TypeAdapter

from workers.contract.base import WireModel
from workers.contract.messages import ToolCall
from workers.contract.prompt import PromptInfo
from workers.contract.result import CompletionResult, ErrorInfo, Usage


class _Event(WireModel):
    job_id: str
    seq: int = Field(ge=0)
    #: Which execution of the job produced the event (a redelivered job runs again).
    run: int = 1
    ts: float = Field(default_factory=time.time)


class StartEvent(_Event):
    type: Literal["start"] = "start"
    model: str
    #: The published prompt version the messages were rendered from, if any.
    prompt: PromptInfo | None = None


class DeltaEvent(_Event):
    type: Literal["delta"] = "delta"
    text: str


class ToolCallEvent(_Event):
    """A tool call: run by the worker's tool loop (``turn`` set), or a client call in the result."""

    type: Literal["tool_call"] = "tool_call"
    tool_call: ToolCall
    #: The model turn (1-based) whose answer made the call; None for a client tool call.
    turn: int | None = None


class ToolResultEvent(_Event):
    """The outcome of one worker tool call, fed back to the model as a ``tool`` message."""

    type: Literal["tool_result"] = "tool_result"
    turn: int
    call_id: str
    name: str
    ok: bool
    #: Why the call failed (``unknown tool``, invalid arguments, timeout, the handler's error as
    #: ``<ExceptionClass>: <message>``; ``?text=0`` keeps the part before the first colon).
    error: str | None = None
    #: The start of the (redacted) result text.
    preview: str = ""
    duration_s: float = 0.0


class UsageEvent(_Event):
    type: Literal["usage"] = "usage"
    usage: Usage


class RepairEvent(_Event):
    """The answer so far failed ``response_format``: its text is discarded and the model asked again.

    A consumer that joins ``delta`` texts starts over after this event.
    """

    type: Literal["repair"] = "repair"
    attempt: int = Field(ge=1)
    errors: list[str] = Field(default_factory=list)


class DoneEvent(_Event):
    type: Literal["done"] = "done"
    result: CompletionResult


class ErrorEvent(_Event):
    type: Literal["error"] = "error"
    error: ErrorInfo
    result: CompletionResult | None = None


class CancelledEvent(_Event):
    type: Literal["cancelled"] = "cancelled"
    result: CompletionResult | None = None


StreamEvent = Annotated[
    StartEvent
    | DeltaEvent
    | ToolCallEvent
    | ToolResultEvent
    | UsageEvent
    | RepairEvent
    | DoneEvent
    | ErrorEvent
    | CancelledEvent,
    Field(discriminator="type"),
]
TERMINAL_EVENT_TYPES = frozenset({"done", "error", "cancelled"})

_EVENT_ADAPTER: TypeAdapter[StreamEvent] = TypeAdapter(StreamEvent)


def parse_event(raw: str | bytes) -> StreamEvent:
    """Validate one JSON-encoded stream event."""
    return _EVENT_ADAPTER.validate_json(raw)

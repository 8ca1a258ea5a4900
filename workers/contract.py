"""The wire contract shared by producers and workers.

Everything that crosses Redis is one of the pydantic models below, serialized as JSON (never
pickle). Producers import this module and nothing else from ``workers``; keep it import-light
(pydantic and the standard library only) and free of side effects.

Redis key layout (all per job, all derived from the job id) lives here too, so that the two
sides can never disagree on where a result or an event stream is.
"""

from __future__ import annotations

import re
import secrets
import string
import time
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    TypeAdapter,
    field_validator,
    model_validator,
)

__all__ = [
    "DEFAULT_QUEUE",
    "SCHEMA_VERSION",
    "TASK_NAME",
    "TERMINAL_EVENT_TYPES",
    "Attempt",
    "CancelledEvent",
    "CompletionJob",
    "CompletionResult",
    "DeltaEvent",
    "DoneEvent",
    "ErrorEvent",
    "ErrorInfo",
    "FunctionCall",
    "JobKeys",
    "Message",
    "StartEvent",
    "StreamEvent",
    "Timings",
    "Tool",
    "ToolCall",
    "ToolCallEvent",
    "ToolFunction",
    "Usage",
    "UsageEvent",
    "base_model_name",
    "new_job_id",
    "parse_event",
    "split_model_id",
]

#: Bumped on any incompatible change of the models below.
SCHEMA_VERSION = 1
#: The single Celery task name; producers send by name and never import the task.
TASK_NAME = "llmq.run_job"
#: Default Celery queue for jobs.
DEFAULT_QUEUE = "llmq"

_MODEL_ID = re.compile(r"^[a-z][a-z0-9_-]*:[^\s:][^\s]*$")
_ALIAS = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]*$")
_SECRET_KEY = re.compile(r"(?i)(api[_-]?key|authorization|secret|password|passwd|bearer|access[_-]?token)")
_JOB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")


def new_job_id() -> str:
    """An unguessable job id (128 bits of randomness)."""
    return "job_" + secrets.token_hex(16)


def split_model_id(model: str) -> tuple[str, str]:
    """``"openai:gpt-4o"`` -> ``("openai", "gpt-4o")``; an alias has no provider."""
    provider, sep, name = model.partition(":")
    if not sep:
        raise ValueError(f"{model!r} is a route alias, not a provider:model id")
    return provider, name


def base_model_name(name: str) -> str:
    """A model name without its ``~variant`` tag: ``gpt-4o~eu`` is priced and counted as ``gpt-4o``.

    Real provider model names never contain ``~``; the tag lets one model appear several times in
    routes (and selects the simulator's scripted faults, e.g. ``gpt-4o~429@2``).
    """
    return name.partition("~")[0]


def _template_fields(template: str) -> set[str]:
    try:
        return {name for _, name, _, _ in string.Formatter().parse(template) if name}
    except ValueError as exc:
        raise ValueError(f"template is not a valid format string: {exc}") from None


def _check_model_ref(value: str) -> str:
    if _MODEL_ID.match(value) or _ALIAS.match(value):
        return value
    raise ValueError(
        f"model {value!r} must be 'provider:model' (e.g. 'openai:gpt-4o') or a route alias (e.g. 'default')"
    )


class _Wire(BaseModel):
    """Base of every wire object: unknown fields are errors, values are validated on assignment."""

    model_config = ConfigDict(extra="forbid", frozen=False, validate_assignment=False)


class FunctionCall(_Wire):
    name: str = Field(min_length=1)
    #: The arguments as a JSON string, exactly as OpenAI sends them.
    arguments: str = "{}"


class ToolCall(_Wire):
    id: str = Field(min_length=1)
    type: Literal["function"] = "function"
    function: FunctionCall


class ToolFunction(_Wire):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    description: str | None = None
    #: JSON Schema of the arguments.
    parameters: dict[str, JsonValue] = Field(default_factory=lambda: {"type": "object", "properties": {}})


class Tool(_Wire):
    type: Literal["function"] = "function"
    function: ToolFunction


class Message(_Wire):
    """An OpenAI-style chat message (system, user, assistant with tool calls, tool result)."""

    role: Literal["system", "user", "assistant", "tool"]
    content: str | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None

    @model_validator(mode="after")
    def _shape(self) -> Message:
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a 'tool' message needs tool_call_id")
        if self.role != "tool" and self.tool_call_id is not None:
            raise ValueError("tool_call_id is only allowed on 'tool' messages")
        if self.tool_calls and self.role != "assistant":
            raise ValueError("tool_calls are only allowed on 'assistant' messages")
        if self.content is None and not self.tool_calls:
            raise ValueError(f"a '{self.role}' message needs content")
        return self


class CompletionJob(_Wire):
    """One completion request, as enqueued by a producer."""

    schema_version: Literal[1] = SCHEMA_VERSION
    #: Idempotency key. Set it yourself to make resubmission safe; defaults to a random id.
    id: str = Field(default_factory=new_job_id)
    #: ``provider:model`` or a route alias from the worker's config.
    model: str
    #: Models tried in order when ``model`` fails with a fallback-eligible error.
    fallbacks: list[str] = Field(default_factory=list, max_length=8)
    messages: list[Message] | None = None
    template: str | None = None
    variables: dict[str, str] = Field(default_factory=dict)
    tools: list[Tool] = Field(default_factory=list)
    max_tokens: Annotated[int, Field(gt=0, le=1_000_000)] = 1024
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] | None = None
    stream: bool = True
    tenant: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")] = "default"
    metadata: dict[str, str] = Field(default_factory=dict)
    truncate: Literal["error", "sliding_window"] = "error"
    #: Seconds from submission after which the job is abandoned (no further attempts).
    deadline_s: Annotated[float, Field(gt=0)] | None = None
    #: Set by the producer at submission (unix seconds); used for queue time and deadlines.
    submitted_at: float | None = None
    #: A Redis list (``llmq:reply:...``) the worker RPUSHes the final result JSON to: lets a
    #: producer with many jobs in flight (batch runs) wait on one BLPOP instead of one
    #: subscription per job.
    reply_to: Annotated[str, Field(pattern=r"^llmq:reply:[A-Za-z0-9_.:-]{1,128}$")] | None = None

    @field_validator("id")
    @classmethod
    def _id(cls, value: str) -> str:
        if not _JOB_ID.match(value):
            raise ValueError("id must be 1-128 chars of letters, digits, '_', '.', ':' or '-'")
        return value

    @field_validator("model")
    @classmethod
    def _model(cls, value: str) -> str:
        return _check_model_ref(value)

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, value: dict[str, str]) -> dict[str, str]:
        for key in value:
            if _SECRET_KEY.search(key):
                raise ValueError(
                    f"metadata key {key!r} looks like a credential; provider keys belong in the "
                    "worker's environment, never in jobs"
                )
        return value

    @field_validator("fallbacks")
    @classmethod
    def _fallbacks(cls, value: list[str]) -> list[str]:
        return [_check_model_ref(v) for v in value]

    @model_validator(mode="after")
    def _prompt(self) -> CompletionJob:
        if self.messages is None and self.template is None:
            raise ValueError("a job needs 'messages' or 'template'")
        if self.messages is not None and self.template is not None:
            raise ValueError("give either 'messages' or 'template', not both")
        if self.messages is not None and not self.messages:
            raise ValueError("messages must not be empty")
        if self.template is not None:
            missing = _template_fields(self.template) - set(self.variables)
            if missing:
                raise ValueError(f"template variables without a value: {', '.join(sorted(missing))}")
        return self

    @property
    def chain(self) -> list[str]:
        return [self.model, *self.fallbacks]


class Usage(_Wire):
    #: Every prompt token, including those read from or written to the provider's prompt cache.
    prompt_tokens: int = 0
    completion_tokens: int = 0
    #: Of ``prompt_tokens``: read from the provider's prompt cache (billed at its cache-read rate).
    cached_tokens: int = 0
    #: Of ``prompt_tokens``: written to the prompt cache (Anthropic; billed at its cache-write rate).
    cache_write_tokens: int = 0
    #: True when the provider did not report usage and these are our own counts.
    estimated: bool = False

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class ErrorInfo(_Wire):
    type: str
    message: str
    retryable: bool = False
    code: str | None = None
    status: int | None = None
    provider: str | None = None
    model: str | None = None
    retry_after_s: float | None = None


class Attempt(_Wire):
    model: str
    status: Literal["succeeded", "failed", "skipped"]
    error_type: str | None = None
    http_status: int | None = None
    #: Seconds waited before the next attempt because of this one (Retry-After or backoff).
    wait_s: float = 0.0
    message: str | None = None


class Timings(_Wire):
    queued_s: float | None = None
    ttft_s: float | None = None
    total_s: float | None = None


class CompletionResult(_Wire):
    schema_version: Literal[1] = SCHEMA_VERSION
    id: str
    status: Literal["succeeded", "failed", "cancelled"]
    content: str = ""
    tool_calls: list[ToolCall] = Field(default_factory=list)
    finish_reason: str | None = None
    usage: Usage = Field(default_factory=Usage)
    model_used: str | None = None
    attempts: list[Attempt] = Field(default_factory=list)
    cost_usd: float | None = None
    error: ErrorInfo | None = None
    timings: Timings = Field(default_factory=Timings)
    tenant: str = "default"
    metadata: dict[str, str] = Field(default_factory=dict)
    #: Messages dropped by ``truncate: sliding_window`` to fit the context window.
    truncated_messages: int = 0


# --- stream events ----------------------------------------------------------------------------


class _Event(_Wire):
    job_id: str
    seq: int = Field(ge=0)
    #: Which execution of the job produced the event (a redelivered job runs again).
    run: int = 1
    ts: float = Field(default_factory=time.time)


class StartEvent(_Event):
    type: Literal["start"] = "start"
    model: str


class DeltaEvent(_Event):
    type: Literal["delta"] = "delta"
    text: str


class ToolCallEvent(_Event):
    type: Literal["tool_call"] = "tool_call"
    tool_call: ToolCall


class UsageEvent(_Event):
    type: Literal["usage"] = "usage"
    usage: Usage


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
    StartEvent | DeltaEvent | ToolCallEvent | UsageEvent | DoneEvent | ErrorEvent | CancelledEvent,
    Field(discriminator="type"),
]
TERMINAL_EVENT_TYPES = frozenset({"done", "error", "cancelled"})

_EVENT_ADAPTER: TypeAdapter[StreamEvent] = TypeAdapter(StreamEvent)


def parse_event(raw: str | bytes) -> StreamEvent:
    """Validate one JSON-encoded stream event."""
    return _EVENT_ADAPTER.validate_json(raw)


# --- Redis key layout -------------------------------------------------------------------------


class JobKeys:
    """Every Redis key and channel that belongs to one job."""

    __slots__ = ("cancel", "channel", "claim", "events", "job_id", "meta", "result")

    PREFIX = "llmq:job:"

    def __init__(self, job_id: str) -> None:
        base = f"{self.PREFIX}{job_id}"
        self.job_id = job_id
        #: Pub/sub channel for live events.
        self.channel = f"{base}:live"
        #: Capped Redis Stream holding every event for replay (entry id = ``<seq>-1``).
        self.events = f"{base}:events"
        #: Hash: state, tenant, submitted_at; created once at submission (the idempotency guard).
        self.meta = f"{base}:meta"
        #: The final CompletionResult JSON, with a TTL.
        self.result = f"{base}:result"
        #: Present when a consumer asked for cancellation.
        self.cancel = f"{base}:cancel"
        #: Lease held by the worker currently running the job.
        self.claim = f"{base}:claim"

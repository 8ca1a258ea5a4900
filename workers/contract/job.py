"""What a producer sends: the job, its messages and tools."""

from __future__ import annotations

import string
from typing import Annotated, Literal

from pydantic import Field, JsonValue, field_validator, model_validator

from workers.contract.base import (
    _JOB_ID,
    _SECRET_KEY,
    SCHEMA_VERSION,
    _check_model_ref,
    _Wire,
    new_job_id,
)


def _template_fields(template: str) -> set[str]:
    try:
        return {name for _, name, _, _ in string.Formatter().parse(template) if name}
    except ValueError as exc:
        raise ValueError(f"template is not a valid format string: {exc}") from None


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


#: A worker tool, named by a string in a job's ``tools`` (registered with ``@tool`` on the workers).
ToolName = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]


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
    #: Client tools (objects, passed through to the model; their calls end the job with
    #: ``finish_reason: tool_calls``) and worker tools (names; the worker runs their calls).
    tools: list[Tool | ToolName] = Field(default_factory=list)
    #: Model turns the worker's tool loop may take (default 10); more ends the job ``max_turns``.
    max_turns: Annotated[int, Field(ge=1, le=100)] | None = None
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
        names = [t if isinstance(t, str) else t.function.name for t in self.tools]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"tools named more than once: {', '.join(duplicates)}")
        if self.template is not None:
            missing = _template_fields(self.template) - set(self.variables)
            if missing:
                raise ValueError(f"template variables without a value: {', '.join(sorted(missing))}")
        return self

    @property
    def client_tools(self) -> list[Tool]:
        """The tool definitions passed through to the model as they are."""
        return [t for t in self.tools if isinstance(t, Tool)]

    @property
    def worker_tools(self) -> list[str]:
        """The names of the worker tools this job may use (the worker runs their calls)."""
        return [t for t in self.tools if isinstance(t, str)]

    @property
    def chain(self) -> list[str]:
        return [self.model, *self.fallbacks]

"""What a producer sends: the job, its messages and tools."""

from __future__ import annotations

import re
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
from workers.contract.prompt import PromptRef

#: The inline ``template`` is one line of plain ``{name}`` placeholders: no format specs (a spec such
#: as ``{x:>300000000}`` would make the worker build a 300 MB string), no conversions, no attribute
#: or index access. Named, versioned, sandboxed prompts (``prompt``) are the real templating.
TEMPLATE_MAX_CHARS = 4_000
_PLACEHOLDER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")


def template_fields(template: str) -> list[tuple[str, str | None]]:
    """``template`` as (literal, placeholder) pairs; ValueError for anything but plain ``{name}``."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ValueError(f"template is not a valid format string: {exc}") from None
    parts: list[tuple[str, str | None]] = []
    for literal, name, spec, conversion in parsed:
        if name is not None:
            if spec or conversion:
                raise ValueError(
                    f"template placeholder {{{name}}} has a format spec or conversion; only plain {{name}} "
                    "placeholders are allowed (use a published prompt for formatting)"
                )
            if not _PLACEHOLDER.match(name):
                raise ValueError(f"template placeholder {{{name}}} must be a plain variable name")
        parts.append((literal, name))
    return parts


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
    #: One line of plain ``{name}`` placeholders filled from ``variables`` (one user message).
    template: Annotated[str, Field(max_length=TEMPLATE_MAX_CHARS)] | None = None
    variables: dict[str, str] = Field(default_factory=dict)
    #: A published prompt (``name``, ``version`` or ``label``, ``variables``) instead of messages.
    prompt: PromptRef | None = None
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
        given = [f for f in ("messages", "template", "prompt") if getattr(self, f) is not None]
        if not given:
            raise ValueError("a job needs 'messages', 'prompt' or 'template'")
        if len(given) > 1:
            raise ValueError(f"give one of 'messages', 'prompt' or 'template', not {' and '.join(given)}")
        if self.messages is not None and not self.messages:
            raise ValueError("messages must not be empty")
        if self.template is not None:
            used = {name for _, name in template_fields(self.template) if name is not None}
            missing = used - set(self.variables)
            if missing:
                raise ValueError(f"template variables without a value: {', '.join(sorted(missing))}")
        return self

    @property
    def chain(self) -> list[str]:
        return [self.model, *self.fallbacks]

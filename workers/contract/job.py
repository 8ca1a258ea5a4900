"""What a producer sends: the job, its messages and tools."""

from __future__ import annotations

import re
import string
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import Field, JsonValue, field_validator, model_validator

from workers.contract.base import (
    _JOB_ID,
    _SECRET_KEY,
    SCHEMA_VERSION,
    WEBHOOK_NAME,
    _check_model_ref,
    _Wire,
    new_job_id,
    unencodable_text_path,
)
from workers.contract.params import (
    ContentPart,
    ImagePart,
    NamedToolChoice,
    Reasoning,
    ResponseFormat,
    TextPart,
    ToolChoice,
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


def _empty_object_schema() -> dict[str, JsonValue]:
    return {"type": "object", "properties": {}}


class ToolFunction(_Wire):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    description: str | None = None
    #: JSON Schema of the arguments.
    parameters: dict[str, JsonValue] = Field(default_factory=_empty_object_schema)


class Tool(_Wire):
    type: Literal["function"] = "function"
    function: ToolFunction


#: How many tags a job may carry: each one is a budget scope and a row of the spend report.
MAX_TAGS = 8
#: A tag: 1-64 of letters, digits, ``_ . : / -`` (it is part of Redis key names and report rows).
TagName = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:/-]+$")]

#: A worker tool, named by a string in a job's ``tools`` (registered with ``@tool`` on the workers).
ToolName = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]


class ReasoningBlock(_Wire):
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


class Message(_Wire):
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
    #: A few short labels (a feature, a team, an experiment) the ledger keeps spend by
    #: (``llmq spend --by tag``) and that budgets may cap (``llmq budget set --tag T``).
    tags: list[TagName] = Field(default_factory=list, max_length=MAX_TAGS)
    truncate: Literal["error", "sliding_window"] = "error"
    #: Seconds from submission after which the job is abandoned (no further attempts).
    deadline_s: Annotated[float, Field(gt=0)] | None = None
    #: Set by the producer at submission (unix seconds); used for queue time and deadlines.
    submitted_at: float | None = None
    #: A Redis list (``llmq:reply:...``) the worker RPUSHes the final result JSON to: lets a
    #: producer with many jobs in flight (batch runs) wait on one BLPOP instead of one
    #: subscription per job.
    reply_to: Annotated[str, Field(pattern=r"^llmq:reply:[A-Za-z0-9_.:-]{1,128}$")] | None = None
    #: W3C trace context of the submit span (set by the producer): the worker's job span is its
    #: child, across re-queues and redeliveries.
    traceparent: Annotated[str, Field(pattern=r"^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")] | None = None
    tracestate: Annotated[str, Field(max_length=512)] | None = None
    #: ``{"type": "json_object"}`` or ``{"type": "json_schema", "json_schema": {name, schema, strict}}``:
    #: the worker validates the answer, repairs it up to ``max_repairs`` times, sets ``result.parsed``.
    response_format: ResponseFormat | None = None
    #: Repair turns (each a full, metered model call) after an answer that fails the schema.
    max_repairs: Annotated[int, Field(ge=0, le=3)] = 1
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    #: Up to 4 stop sequences.
    stop: list[Annotated[str, Field(min_length=1, max_length=256)]] | None = Field(default=None, max_length=4)
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] | None = None
    seed: int | None = None
    #: The end user (OpenAI's ``user``; Anthropic's ``metadata.user_id``); kept in telemetry.
    user: Annotated[str, Field(min_length=1, max_length=256)] | None = None
    reasoning: Reasoning | None = None
    #: The id of the failed job this one re-runs (set by ``llmq jobs replay``; shown in the history).
    replay_of: Annotated[str, Field(min_length=1, max_length=128)] | None = None
    #: Where to POST the result when the job ends (Standard Webhooks signatures): the name of a
    #: webhook in the workers' config (``[webhooks.endpoints.<name>]``) or an http(s) URL, signed
    #: with the workers' default secret. Secrets never travel in jobs; a URL with credentials is refused.
    webhook: Annotated[str, Field(min_length=1, max_length=2048)] | None = None

    @model_validator(mode="before")
    @classmethod
    def _encodable(cls, data: object) -> object:
        where = unencodable_text_path(data)
        if where:
            raise ValueError(f"{where} holds text that is not valid Unicode (a lone surrogate such as \\ud800)")
        return data

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

    @field_validator("webhook")
    @classmethod
    def _webhook(cls, value: str | None) -> str | None:
        if value is None or WEBHOOK_NAME.match(value):
            return value
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("webhook must be a configured webhook's name or an http(s) URL")
        if parts.username is not None or parts.password is not None:
            raise ValueError("a webhook URL must not carry credentials (the workers sign deliveries instead)")
        return value

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

    @field_validator("tags")
    @classmethod
    def _tags(cls, value: list[str]) -> list[str]:
        return list(dict.fromkeys(value))  # a repeated tag counts once

    @field_validator("stop", mode="before")
    @classmethod
    def _stop(cls, value: object) -> object:
        return [value] if isinstance(value, str) else value

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
        names = [t if isinstance(t, str) else t.function.name for t in self.tools]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"tools named more than once: {', '.join(duplicates)}")
        if self.template is not None:
            used = {name for _, name in template_fields(self.template) if name is not None}
            missing = used - set(self.variables)
            if missing:
                raise ValueError(f"template variables without a value: {', '.join(sorted(missing))}")
        return self

    @model_validator(mode="after")
    def _params(self) -> CompletionJob:
        from workers.contract.capabilities import check_job

        choice = self.tool_choice
        if choice in ("required",) or isinstance(choice, NamedToolChoice):
            if not self.tools:
                raise ValueError("tool_choice 'required' or a named function needs tools")
        if isinstance(choice, NamedToolChoice) and choice.function.name not in {
            t if isinstance(t, str) else t.function.name for t in self.tools
        }:
            raise ValueError(f"tool_choice names {choice.function.name!r}, which is not one of the job's tools")
        if self.reasoning is not None:
            if self.reasoning.effort is None and self.reasoning.budget_tokens is None:
                raise ValueError("reasoning needs 'effort' or 'budget_tokens'")
            if self.reasoning.budget_tokens is not None and self.reasoning.budget_tokens >= self.max_tokens:
                raise ValueError("reasoning.budget_tokens must be below max_tokens (thinking counts toward it)")
        check_job(self, [m for m in self.chain if ":" in m])
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

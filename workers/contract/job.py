"""What a producer sends: the job (its conversation or prompt, tools, request parameters, routing)."""

from __future__ import annotations

import re
import string
from collections.abc import Mapping
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from workers.contract.base import (
    JOB_ID_PATTERN,
    SCHEMA_VERSION,
    SECRET_KEY_PATTERN,
    WEBHOOK_NAME,
    check_model_ref,
    new_job_id,
    unencodable_text_path,
)
from workers.contract.caching import CacheSpec
from workers.contract.capabilities import CapabilityError, problems
from workers.contract.messages import MAX_CACHE_BREAKPOINTS, Message, Tool, ToolName, cache_breakpoints
from workers.contract.params import NamedToolChoice, RequestParams
from workers.contract.prompt import PromptRef
from workers.contract.providers import ProviderInfo
from workers.contract.schedule import CONCURRENCY_KEY_PATTERN, DEFAULT_PRIORITY, PRIORITIES, Priority, priority_error

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


#: How many tags a job may carry: each one is a budget scope and a row of the spend report.
MAX_TAGS = 8
#: A tag: 1-64 of letters, digits, ``_ . : / -`` (it is part of Redis key names and report rows).
TagName = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:/-]+$")]


# A job is its own RequestParams (params.py): ``max_tokens``, ``temperature``, ``response_format`` ...
# are fields of the job on the wire, and the worker hands the job itself to the provider adapters as
# the request's parameters, no copy in between.
class CompletionJob(RequestParams):
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
    stream: bool = True
    tenant: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")] = "default"
    #: Scheduling class: ``interactive`` (the gateway's default), ``normal`` or ``bulk`` (``llmq
    #: batch``'s). Classes share the workers by weight, never strictly (``docs/scheduling.md``).
    priority: Priority = DEFAULT_PRIORITY
    #: Jobs of one tenant with the same key (a user, a document) run at most N at once across all
    #: workers (``key_concurrency`` in ``[scheduling]`` / ``[tenants.<name>]``; 1 unless configured).
    concurrency_key: Annotated[str, Field(pattern=CONCURRENCY_KEY_PATTERN)] | None = None
    metadata: dict[str, str] = Field(default_factory=dict)
    #: A few short labels (a feature, a team, an experiment) the ledger keeps spend by
    #: (``llmq spend --by tag``) and that budgets may cap (``llmq budget set --tag T``).
    tags: list[TagName] = Field(default_factory=list, max_length=MAX_TAGS)
    truncate: Literal["error", "sliding_window"] = "error"
    #: Serve an identical earlier request's answer from the response cache, store this one there,
    #: and share one upstream call with identical jobs in flight (``workers/contract/caching.py``).
    cache: CacheSpec | None = None
    #: Seconds from submission after which the job is abandoned (no further attempts).
    deadline_s: Annotated[float, Field(gt=0)] | None = None
    #: May the job wait for a provider batch (OpenAI Batch, Anthropic Message Batches: half the
    #: price, answered within the provider's window, 24 h)? ``allow``: yes, when its model's provider
    #: has a batch API; ``auto``: only when ``deadline_s`` (none: no hurry) leaves room for the
    #: window plus a margin, else live (OpenAI ``service_tier: "flex"`` where the model has it).
    #: Unset: live. The job keeps its id, events and result either way (``[batch]`` in the config).
    batch: Literal["allow", "auto"] | None = None
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
    #: Repair turns (each a full, metered model call) after an answer that fails ``response_format``.
    max_repairs: Annotated[int, Field(ge=0, le=3)] = 1
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
        if not JOB_ID_PATTERN.match(value):
            raise ValueError("id must be 1-128 chars of letters, digits, '_', '.', ':' or '-'")
        return value

    @field_validator("model")
    @classmethod
    def _model(cls, value: str) -> str:
        return check_model_ref(value)

    @field_validator("priority", mode="before")
    @classmethod
    def _priority(cls, value: object) -> object:
        if value not in PRIORITIES:
            raise ValueError(priority_error(value))  # with the nearest class (did you mean ...?)
        return value

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
            if SECRET_KEY_PATTERN.search(key):
                raise ValueError(
                    f"metadata key {key!r} looks like a credential; provider keys belong in the "
                    "worker's environment, never in jobs"
                )
        return value

    @field_validator("tags", mode="before")
    @classmethod
    def _tags(cls, value: object) -> object:
        # a repeated tag counts once, before the count is checked (body and header tags may repeat)
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return list(dict.fromkeys(value))
        return value

    @field_validator("fallbacks")
    @classmethod
    def _fallbacks(cls, value: list[str]) -> list[str]:
        return [check_model_ref(v) for v in value]

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
    def _cache_breakpoints(self) -> CompletionJob:
        marks = cache_breakpoints(self.client_tools, self.messages or [])
        if len(marks) > MAX_CACHE_BREAKPOINTS:
            raise ValueError(
                f"{len(marks)} cache_control breakpoints; Anthropic takes at most {MAX_CACHE_BREAKPOINTS} per request"
            )
        first_short = marks.index("5m") if "5m" in marks else len(marks)
        if "1h" in marks[first_short:]:
            raise ValueError("a 1h cache_control breakpoint must come before every 5m one (tools, system, messages)")
        return self

    @model_validator(mode="after")
    def _params(self) -> CompletionJob:
        choice = self.tool_choice
        if choice in ("required",) or isinstance(choice, NamedToolChoice):
            if not self.tools:
                raise ValueError("tool_choice 'required' or a named function needs tools")
        if self.answers > 1 and self.tools:
            raise ValueError(
                "n > 1 cannot be combined with tools (each answer's tool calls would need a turn of its own)"
            )
        if isinstance(choice, NamedToolChoice) and choice.function.name not in {
            t if isinstance(t, str) else t.function.name for t in self.tools
        }:
            raise ValueError(f"tool_choice names {choice.function.name!r}, which is not one of the job's tools")
        for model_id in self.chain:
            if ":" in model_id:  # a route alias is checked on the worker, once resolved
                found = self.capability_problems(model_id)
                if found:
                    raise found[0]
        return self

    def capability_problems(
        self, model_id: str, providers: Mapping[str, ProviderInfo] | None = None
    ) -> list[CapabilityError]:
        """What ``model_id``'s provider cannot do of this job (the capability table; ``providers``:
        the named providers and their types, ``[providers.<name>]``)."""
        return problems(self, model_id, providers, messages=self.messages or (), tools=bool(self.tools))

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

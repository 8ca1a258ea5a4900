"""What a worker answers: the result, its usage, attempts and error."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, JsonValue

from workers.contract.base import SCHEMA_VERSION, WireModel
from workers.contract.messages import Message, ReasoningBlock, ToolCall
from workers.contract.prompt import PromptInfo


class Usage(WireModel):
    #: Every prompt token, including those read from or written to the provider's prompt cache.
    prompt_tokens: int = 0
    completion_tokens: int = 0
    #: Of ``prompt_tokens``: read from the provider's prompt cache (billed at its cache-read rate).
    cached_tokens: int = 0
    #: Of ``prompt_tokens``: written to the prompt cache (Anthropic; billed at its cache-write rate).
    cache_write_tokens: int = 0
    #: Of ``cache_write_tokens``: written with a 1-hour TTL (Anthropic; billed at its 1-hour write
    #: rate, the rest at the 5-minute one).
    cache_write_1h_tokens: int = 0
    #: Of ``completion_tokens``: spent thinking (OpenAI reasoning, Anthropic extended thinking);
    #: billed at the output rate like the rest of the completion.
    reasoning_tokens: int = 0
    #: True when the provider did not report usage and these are our own counts.
    estimated: bool = False

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def __add__(self, other: Usage) -> Usage:
        """The usage of two calls together (estimated if either was)."""
        return Usage(
            prompt_tokens=self.prompt_tokens + other.prompt_tokens,
            completion_tokens=self.completion_tokens + other.completion_tokens,
            cached_tokens=self.cached_tokens + other.cached_tokens,
            cache_write_tokens=self.cache_write_tokens + other.cache_write_tokens,
            cache_write_1h_tokens=self.cache_write_1h_tokens + other.cache_write_1h_tokens,
            reasoning_tokens=self.reasoning_tokens + other.reasoning_tokens,
            estimated=self.estimated or other.estimated,
        )


class TopLogprob(WireModel):
    """One token and its log probability (OpenAI's ``top_logprobs`` entry)."""

    token: str
    logprob: float
    #: The token's UTF-8 bytes (a token may be part of a character); None when the provider sends none.
    bytes: list[int] | None = None


class TokenLogprob(TopLogprob):
    """A token of the answer with its log probability, and the likeliest tokens at its position
    (``top_logprobs`` of them)."""

    top_logprobs: list[TopLogprob] = Field(default_factory=list)


class Alternative(WireModel):
    """One more answer of a job with ``n`` > 1 (the first is the result's own ``content``)."""

    index: int = Field(ge=1)
    content: str = ""
    finish_reason: str | None = None
    logprobs: list[TokenLogprob] | None = None


class ErrorInfo(WireModel):
    type: str
    message: str
    retryable: bool = False
    code: str | None = None
    status: int | None = None
    provider: str | None = None
    model: str | None = None
    retry_after_s: float | None = None


class Attempt(WireModel):
    model: str
    status: Literal["succeeded", "failed", "skipped"]
    error_type: str | None = None
    http_status: int | None = None
    #: Seconds waited before the next attempt because of this one (Retry-After or backoff).
    wait_s: float = 0.0
    message: str | None = None
    #: The model turn of a tool-loop job this attempt belongs to (1-based).
    turn: int | None = None


class Timings(WireModel):
    queued_s: float | None = None
    ttft_s: float | None = None
    total_s: float | None = None


class CompletionResult(WireModel):
    schema_version: Literal[1] = SCHEMA_VERSION
    id: str
    status: Literal["succeeded", "failed", "cancelled"]
    content: str = ""
    tool_calls: list[ToolCall] = Field(default_factory=list)
    #: The final answer's thinking blocks (Anthropic extended thinking): put them on the assistant
    #: message (``reasoning_blocks``) of a follow-up job that answers ``tool_calls``.
    reasoning_blocks: list[ReasoningBlock] = Field(default_factory=list)
    finish_reason: str | None = None
    usage: Usage = Field(default_factory=Usage)
    model_used: str | None = None
    attempts: list[Attempt] = Field(default_factory=list)
    cost_usd: float | None = None
    #: The answer came from the response cache or from an identical job's call in flight (cost 0;
    #: ``usage`` is that answer's).
    cached: bool = False
    error: ErrorInfo | None = None
    timings: Timings = Field(default_factory=Timings)
    tenant: str = "default"
    metadata: dict[str, str] = Field(default_factory=dict)
    #: The job's tags and end user, as the ledger counted its spend.
    tags: list[str] = Field(default_factory=list)
    user: str | None = None
    #: Messages dropped by ``truncate: sliding_window`` to fit the context window.
    truncated_messages: int = 0
    #: The published prompt version the messages were rendered from, if any.
    prompt: PromptInfo | None = None
    #: With ``response_format``: the answer parsed as JSON (and valid for the schema).
    parsed: JsonValue | None = None
    #: The model declined to answer (OpenAI's ``refusal``, Anthropic's ``refusal`` stop): the
    #: explanation is here, ``content`` stays empty and ``parsed`` None.
    refusal: str | None = None
    #: With ``logprobs``: each token of ``content`` with its log probability (and, with
    #: ``top_logprobs``, the likeliest tokens at its position).
    logprobs: list[TokenLogprob] | None = None
    #: With ``n`` > 1: the other answers, index 1 to n-1 (the first is ``content`` itself); ``usage``
    #: counts them all.
    alternatives: list[Alternative] = Field(default_factory=list)
    #: Repair turns the structured-output check needed (each one a full, charged model call).
    repairs: int = 0
    #: Model turns of the worker's tool loop (0 for a job without worker tools).
    turns: int = 0
    #: What the tool loop added to the conversation: each turn's assistant message and tool
    #: results, then the final answer (empty for a job without worker tools).
    messages: list[Message] = Field(default_factory=list)

"""Request parameters beyond the prompt: :class:`RequestParams`, and the shapes of its fields
(content parts, response format, tool choice, reasoning).

The shapes are OpenAI's Chat Completions shapes (what callers already send). One
:class:`RequestParams` travels unchanged from the job to the provider adapters (a
:class:`~workers.contract.job.CompletionJob` *is* one: its parameters are its own fields on the
wire); each adapter on the worker translates the fields its API has, and
:mod:`workers.contract.capabilities` refuses, at submit and again on the worker, a parameter or a
combination a provider cannot do. Adding a parameter: a field here, a line in the capability table
for every provider that lacks it, and the translation in the adapters that have it.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import ConfigDict, Field, JsonValue, field_validator, model_validator

from workers.contract.base import WireModel
from workers.contract.images import ImageInfo, image_info

__all__ = [
    "CacheControl",
    "ContentPart",
    "ImagePart",
    "ImageURL",
    "JsonObjectFormat",
    "JsonSchemaFormat",
    "JsonSchemaSpec",
    "NamedToolChoice",
    "Reasoning",
    "RequestParams",
    "ResponseFormat",
    "TextFormat",
    "TextPart",
    "ToolChoice",
    "ToolChoiceFunction",
]


class CacheControl(WireModel):
    """A prompt-cache breakpoint (Anthropic's ``cache_control``): the prompt up to and including the
    part, message or tool it is on is cached for ``ttl`` (``5m``, or ``1h`` at a higher write price).
    Sent to Anthropic as it is, and to Bedrock as a ``cachePoint`` for Claude and Nova models; other
    providers ignore it (OpenAI and Gemini cache prefixes on their own, Ollama bills nothing)."""

    type: Literal["ephemeral"] = "ephemeral"
    ttl: Literal["5m", "1h"] = "5m"


class TextPart(WireModel):
    type: Literal["text"] = "text"
    text: str
    cache_control: CacheControl | None = None


class ImageURL(WireModel):
    #: ``https://...`` or ``data:image/<png|jpeg|gif|webp>;base64,...``.
    url: str = Field(min_length=1)
    #: OpenAI's detail level; it decides the image's token count (low: a flat 85).
    detail: Literal["auto", "low", "high"] = "auto"

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        image_info(value)  # raises ValueError: bad data URL, oversized, unreadable
        return value

    @property
    def info(self) -> ImageInfo:
        return image_info(self.url)


class ImagePart(WireModel):
    type: Literal["image_url"] = "image_url"
    image_url: ImageURL
    cache_control: CacheControl | None = None


ContentPart = Annotated[TextPart | ImagePart, Field(discriminator="type")]


def _object_schema() -> dict[str, JsonValue]:
    return {"type": "object"}


class JsonSchemaSpec(WireModel):
    model_config = ConfigDict(extra="forbid", serialize_by_alias=True, validate_by_name=True, validate_by_alias=True)

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    description: str | None = None
    #: The JSON Schema (Draft 2020-12) the answer must satisfy.
    schema_: dict[str, JsonValue] = Field(alias="schema", default_factory=_object_schema)
    strict: bool | None = None


class TextFormat(WireModel):
    type: Literal["text"] = "text"


class JsonObjectFormat(WireModel):
    type: Literal["json_object"] = "json_object"


class JsonSchemaFormat(WireModel):
    type: Literal["json_schema"] = "json_schema"
    json_schema: JsonSchemaSpec


ResponseFormat = Annotated[TextFormat | JsonObjectFormat | JsonSchemaFormat, Field(discriminator="type")]


class ToolChoiceFunction(WireModel):
    name: str = Field(min_length=1, max_length=64)


class NamedToolChoice(WireModel):
    type: Literal["function"] = "function"
    function: ToolChoiceFunction


ToolChoice = Literal["auto", "none", "required"] | NamedToolChoice


class Reasoning(WireModel):
    """Let the model think before it answers.

    ``effort`` is OpenAI's ``reasoning_effort``; ``budget_tokens`` is Anthropic's extended-thinking
    budget (at least 1024, below ``max_tokens``). Either may be given: Anthropic maps an effort to a
    budget (low 1024, medium 4096, high 16384); OpenAI takes no budget.
    """

    effort: Literal["minimal", "low", "medium", "high"] | None = None
    budget_tokens: Annotated[int, Field(ge=1024, le=1_000_000)] | None = None

    def anthropic_budget(self) -> int:
        if self.budget_tokens is not None:
            return self.budget_tokens
        return {"minimal": 1024, "low": 1024, "medium": 4096, "high": 16384}[self.effort or "medium"]


class RequestParams(WireModel):
    """What a caller asks of the model beyond the conversation and the tools.

    Every field's "not set" is ``None`` (``max_tokens`` always has a value): an adapter translates
    what is set, and the capability table refuses what a provider cannot do, so no parameter is
    ever dropped silently. Adapters read these fields; nothing between the job and them copies them.
    """

    max_tokens: Annotated[int, Field(gt=0, le=1_000_000)] = 1024
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] | None = None
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] | None = None
    #: Up to 4 stop sequences.
    stop: list[Annotated[str, Field(min_length=1, max_length=256)]] | None = Field(default=None, max_length=4)
    seed: int | None = None
    #: The end user (OpenAI's ``user``; Anthropic's ``metadata.user_id``); kept in telemetry.
    user: Annotated[str, Field(min_length=1, max_length=256)] | None = None
    #: ``{"type": "json_object"}`` or ``{"type": "json_schema", "json_schema": {name, schema, strict}}``:
    #: the worker validates the answer, repairs it up to ``max_repairs`` times, sets ``result.parsed``.
    response_format: ResponseFormat | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    reasoning: Reasoning | None = None
    #: ``"auto"``: the worker marks the longest stable prefix for the provider's prompt cache
    #: (tools and system, and each turn's conversation so far, so every later turn of the tool
    #: loop reads it); Anthropic, and Claude/Nova on Bedrock; others cache prefixes on their own.
    prompt_cache: Literal["auto"] | None = None
    #: OpenAI's ``prompt_cache_key`` (routes requests that share a prefix together); passed to
    #: OpenAI-type providers, ignored by others.
    prompt_cache_key: Annotated[str, Field(min_length=1, max_length=256)] | None = None
    #: Penalize tokens that already appeared (presence) or by how often they did (frequency), -2 to 2.
    presence_penalty: Annotated[float, Field(ge=-2.0, le=2.0)] | None = None
    frequency_penalty: Annotated[float, Field(ge=-2.0, le=2.0)] | None = None
    #: Token id (as a string, in the model's own tokenizer) -> bias from -100 (never) to 100 (only).
    logit_bias: dict[Annotated[str, Field(pattern=r"^[0-9]+$")], Annotated[int, Field(ge=-100, le=100)]] | None = Field(
        default=None, max_length=300
    )
    #: Return each answer token's log probability (``result.logprobs``), and with ``top_logprobs``
    #: the likeliest tokens at each position (0 to 20; needs ``logprobs``).
    logprobs: bool | None = None
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    #: How many answers to generate (``result.alternatives`` holds the 2nd to the n-th); each costs
    #: its output tokens, and the reservation counts ``max_tokens`` for each. Not with tools or a
    #: structured ``response_format`` (each answer would need its own tool loop or repair).
    n: Annotated[int, Field(ge=1, le=16)] | None = None

    @field_validator("stop", mode="before")
    @classmethod
    def _stop(cls, value: object) -> object:
        return [value] if isinstance(value, str) else value

    @property
    def answers(self) -> int:
        """How many answers a call generates (``n``, 1 when unset)."""
        return self.n or 1

    @model_validator(mode="after")
    def _sampling(self) -> RequestParams:
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs: true")
        if self.answers > 1 and self.response_format is not None and not isinstance(self.response_format, TextFormat):
            raise ValueError("n > 1 cannot be combined with a JSON response_format (each answer would need its repair)")
        return self

    @model_validator(mode="after")
    def _reasoning(self) -> RequestParams:
        if self.reasoning is not None:
            if self.reasoning.effort is None and self.reasoning.budget_tokens is None:
                raise ValueError("reasoning needs 'effort' or 'budget_tokens'")
            if self.reasoning.budget_tokens is not None and self.reasoning.budget_tokens >= self.max_tokens:
                raise ValueError("reasoning.budget_tokens must be below max_tokens (thinking counts toward it)")
        return self

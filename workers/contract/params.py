"""Request parameters beyond the prompt: content parts, response format, tool choice, reasoning.

The shapes are OpenAI's Chat Completions shapes (what callers already send); each provider module
on the worker translates them to its own fields, and :mod:`workers.contract.capabilities` refuses
at submit a combination a provider cannot do.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import ConfigDict, Field, JsonValue, field_validator

from workers.contract.base import _Wire
from workers.contract.images import ImageInfo, image_info

__all__ = [
    "ContentPart",
    "ImagePart",
    "ImageURL",
    "JsonObjectFormat",
    "JsonSchemaFormat",
    "JsonSchemaSpec",
    "NamedToolChoice",
    "Reasoning",
    "ResponseFormat",
    "TextFormat",
    "TextPart",
    "ToolChoice",
    "ToolChoiceFunction",
]


class TextPart(_Wire):
    type: Literal["text"] = "text"
    text: str


class ImageURL(_Wire):
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


class ImagePart(_Wire):
    type: Literal["image_url"] = "image_url"
    image_url: ImageURL


ContentPart = Annotated[TextPart | ImagePart, Field(discriminator="type")]


def _object_schema() -> dict[str, JsonValue]:
    return {"type": "object"}


class JsonSchemaSpec(_Wire):
    model_config = ConfigDict(extra="forbid", serialize_by_alias=True, validate_by_name=True, validate_by_alias=True)

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    description: str | None = None
    #: The JSON Schema (Draft 2020-12) the answer must satisfy.
    schema_: dict[str, JsonValue] = Field(alias="schema", default_factory=_object_schema)
    strict: bool | None = None


class TextFormat(_Wire):
    type: Literal["text"] = "text"


class JsonObjectFormat(_Wire):
    type: Literal["json_object"] = "json_object"


class JsonSchemaFormat(_Wire):
    type: Literal["json_schema"] = "json_schema"
    json_schema: JsonSchemaSpec


ResponseFormat = Annotated[TextFormat | JsonObjectFormat | JsonSchemaFormat, Field(discriminator="type")]


class ToolChoiceFunction(_Wire):
    name: str = Field(min_length=1, max_length=64)


class NamedToolChoice(_Wire):
    type: Literal["function"] = "function"
    function: ToolChoiceFunction


ToolChoice = Literal["auto", "none", "required"] | NamedToolChoice


class Reasoning(_Wire):
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

"""``$ref``s inlined for a provider whose schema dialect has none (Gemini), what pydantic generates."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel

from workers.contract import CompletionJob
from workers.contract.schemarefs import RecursiveRefError, inline_refs
from workers.llm.gemini import gemini_schema


class Wind(BaseModel):
    kmh: int


class Day(BaseModel):
    city: str
    wind: Wind
    gusts: list[Wind]


class Node(BaseModel):
    name: str
    children: list[Node] = []


def _refs(value: object) -> list[str]:
    if isinstance(value, dict):
        return [k for k in value if k in ("$ref", "$defs")] + [r for v in value.values() for r in _refs(v)]
    if isinstance(value, list):
        return [r for v in value for r in _refs(v)]
    return []


def test_nested_models_are_inlined_with_the_keywords_beside_a_ref_kept() -> None:
    schema = Day.model_json_schema()
    schema["properties"]["wind"] = {"$ref": "#/$defs/Wind", "description": "at noon"}
    schema["properties"]["definitions"] = {"type": "string"}  # a property of that name is not the definitions
    inlined: Any = inline_refs(schema)
    assert _refs(inlined) == []
    assert inlined["properties"]["wind"]["properties"]["kmh"]["type"] == "integer"
    assert inlined["properties"]["wind"]["description"] == "at noon"
    assert inlined["properties"]["gusts"]["items"]["required"] == ["kmh"]
    assert inlined["properties"]["definitions"] == {"type": "string"}
    assert inline_refs({"$ref": "https://example.com/s.json"}) == {"$ref": "https://example.com/s.json"}


def test_a_recursive_schema_is_refused_or_cut() -> None:
    schema = Node.model_json_schema()
    with pytest.raises(RecursiveRefError, match="#/\\$defs/Node"):
        inline_refs(schema)
    cut: Any = inline_refs(schema, cycles="cut")
    assert cut["properties"]["children"]["items"] == {"type": "object"}
    # Gemini: tool parameters may recurse (cut; the worker validates arguments against the full schema)
    assert _refs(gemini_schema(schema)) == []


def _gemini_problems(schema: dict[str, Any]) -> list[str]:
    fmt = {"type": "json_schema", "json_schema": {"name": "s", "schema": schema}}
    job = CompletionJob.model_validate(
        {"model": "openai:gpt-4o", "messages": [{"role": "user", "content": "hi"}], "response_format": fmt}
    )
    return [e.field for e in job.capability_problems("gemini:gemini-2.5-flash")]


def test_gemini_takes_a_response_schema_with_refs_but_not_a_recursive_one() -> None:
    assert _gemini_problems(Day.model_json_schema()) == []
    assert _gemini_problems(Node.model_json_schema()) == ["response_format"]

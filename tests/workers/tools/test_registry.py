"""The registry: schemas from signatures (pydantic), JSON-Schema tools, argument checks."""

from __future__ import annotations

from typing import Annotated, Any

import pytest
from pydantic import Field

from workers.contract import ToolInfo
from workers.tools import CancelToken, ToolRegistry, register_tool, tool
from workers.tools.validate import check_arguments


@pytest.fixture
def registry() -> ToolRegistry:
    return ToolRegistry()


def test_tool_schema_comes_from_the_signature_and_docstring(registry: ToolRegistry) -> None:
    @tool(registry=registry, timeout_s=5, idempotent=True)
    def get_weather(
        city: Annotated[str, Field(min_length=2, description="the city")],
        days: Annotated[int, Field(ge=1, le=7)] = 1,
        cancel: CancelToken | None = None,
    ) -> str:
        """Today's weather in a city."""
        return city

    spec = registry.get("get_weather")
    assert spec is not None
    assert spec.description == "Today's weather in a city."
    assert (spec.timeout_s, spec.idempotent, spec.sequential) == (5, True, False)
    assert spec.parameters["required"] == ["city"]
    assert spec.parameters["properties"]["city"] == {"type": "string", "minLength": 2, "description": "the city"}
    assert spec.parameters["properties"]["days"] == {"type": "integer", "minimum": 1, "maximum": 7, "default": 1}
    assert spec.parameters["additionalProperties"] is False
    assert "cancel" not in spec.parameters["properties"]
    assert spec.definition().function.name == "get_weather"


def test_a_bare_decorator_registers_under_the_function_name(registry: ToolRegistry) -> None:
    @tool(registry=registry)
    def ping() -> str:
        return "pong"

    assert registry.names() == ["ping"]
    assert ping() == "pong"  # the function itself is unchanged


def test_constraints_are_enforced_and_explained(registry: ToolRegistry) -> None:
    @tool(registry=registry)
    def get_weather(city: Annotated[str, Field(min_length=2)], days: Annotated[int, Field(ge=1, le=7)] = 1) -> str:
        return city

    spec = registry.get("get_weather")
    assert spec is not None
    assert check_arguments(spec, '{"city": "Oslo", "days": 3}') == ({"city": "Oslo", "days": 3}, [])
    assert check_arguments(spec, '{"city": "Oslo"}') == ({"city": "Oslo", "days": 1}, [])
    args, errors = check_arguments(spec, '{"city": "O", "days": 9, "extra": 1}')
    assert args is None
    assert any(e.startswith("city: ") and "too short" in e for e in errors)
    assert any(e.startswith("days: ") and "maximum" in e for e in errors)
    assert any("extra" in e for e in errors)
    assert check_arguments(spec, '{"days": "3"}')[0] is None  # no lax coercion of strings to numbers
    assert check_arguments(spec, "{not json")[1][0].startswith("arguments are not valid JSON")
    assert check_arguments(spec, "[1, 2]")[1] == ["arguments must be a JSON object, got list"]


def test_register_tool_checks_the_schema_with_draft_2020_12(registry: ToolRegistry) -> None:
    calls: list[dict[str, Any]] = []

    def handler(**kwargs: Any) -> str:
        calls.append(kwargs)
        return "ok"

    schema = {
        "type": "object",
        "properties": {"sku": {"type": "string", "pattern": "^[A-Z]{3}$"}, "qty": {"type": "integer", "minimum": 1}},
        "required": ["sku"],
    }
    spec = register_tool("reserve", "Reserve stock.", schema, handler, registry=registry, sequential=True)
    assert spec.sequential and spec.model is None
    assert check_arguments(spec, '{"sku": "ABC", "qty": 2}') == ({"sku": "ABC", "qty": 2}, [])
    args, errors = check_arguments(spec, '{"sku": "abc", "qty": 0}')
    assert args is None and len(errors) == 2
    with pytest.raises(ValueError, match="not a valid JSON Schema"):
        register_tool(
            "bad", None, {"type": "object", "properties": {"x": {"type": "strng"}}}, handler, registry=registry
        )
    with pytest.raises(ValueError, match="must describe an object"):
        register_tool("bad", None, {"type": "string"}, handler, registry=registry)
    with pytest.raises(ValueError, match="tool name"):
        register_tool("bad name", None, {"type": "object"}, handler, registry=registry)


def test_a_different_function_cannot_take_a_registered_name(registry: ToolRegistry) -> None:
    register_tool("lookup", None, {"type": "object"}, lambda: 1, registry=registry)
    with pytest.raises(ValueError, match="already registered"):
        register_tool("lookup", None, {"type": "object"}, print, registry=registry)


def test_info_is_what_workers_publish(registry: ToolRegistry) -> None:
    @tool(registry=registry, sequential=True)
    def audit(entry: str) -> str:
        """Write an audit entry."""
        return entry

    spec = registry.get("audit")
    assert spec is not None
    info = spec.info(timeout_s=30, max_invalid=2)
    assert ToolInfo.model_validate_json(info.model_dump_json()) == info
    assert (info.name, info.sequential, info.idempotent, info.timeout_s) == ("audit", True, False, 30)

"""Validation messages that leave the model's conversation (events, results, the job history) name
the path and what the schema wants, never the value that failed: that value is model output."""

from __future__ import annotations

import json

import pytest
from jsonschema import Draft202012Validator

from workers.contract import CompletionJob
from workers.jobs.structured import validate_answer
from workers.tools.registry import ToolRegistry, register_tool
from workers.tools.validate import check_arguments, schema_message

SECRET = "PINEAPPLE-7731"
SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "pattern": "^[A-Z][a-z]+$", "maxLength": 8},
        "kind": {"enum": ["a", "b"]},
        "n": {"type": "integer"},
        "tags": {"type": "array", "items": {"type": "string"}, "minItems": 3},
        "never": False,
    },
    "required": ["city", "missing"],
    "additionalProperties": False,
}
ANSWER = {"city": SECRET, "kind": SECRET, "n": SECRET, "tags": [SECRET], "never": SECRET}


def test_a_structured_answers_errors_name_no_value() -> None:
    job = CompletionJob(
        model="openai:gpt-4o",
        messages=[{"role": "user", "content": "x"}],
        response_format={"type": "json_schema", "json_schema": {"name": "t", "schema": SCHEMA}},
    )
    parsed, errors = validate_answer(job, json.dumps(ANSWER))
    assert parsed is None and len(errors) >= 4
    assert not [e for e in errors if SECRET in e]
    assert "at city: does not match '^[A-Z][a-z]+$'" in errors
    assert "at n: is not of type 'integer'" in errors
    assert "at (root): 'missing' is a required property" in errors
    assert "at kind: is not one of ['a', 'b']" in errors


def test_a_value_inside_a_message_is_replaced() -> None:
    (error,) = Draft202012Validator(False).iter_errors({"note": SECRET})
    assert SECRET in error.message
    assert schema_message(error) == "False schema does not allow the value"


@pytest.mark.parametrize("arguments", [json.dumps(ANSWER), json.dumps({"city": 5, "n": [SECRET] * 3})])
def test_tool_argument_errors_name_no_value(arguments: str) -> None:
    spec = register_tool("t", None, SCHEMA, lambda **_: "ok", registry=ToolRegistry())
    args, errors = check_arguments(spec, arguments)
    assert args is None and errors
    assert not [e for e in errors if SECRET in e]
    assert all(e.split(": ", 1)[1] for e in errors)  # each still says what is wrong

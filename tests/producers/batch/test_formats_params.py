"""Request parameters in batch lines: each shape's own spelling becomes the job's fields."""

from __future__ import annotations

import base64
import json
import struct
from typing import Any

import pytest

from producers.batch.formats import LineError, parse_line
from workers.contract import JsonSchemaFormat, NamedToolChoice

SCHEMA = {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]}
TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}
_PNG = b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + struct.pack(">II", 8, 8) + b"\x08\x02\0\0\0" + b"\0" * 8
PNG_B64 = base64.b64encode(_PNG).decode()


def _parse(line: dict[str, Any]) -> Any:
    return parse_line(json.dumps(line), 1).job


def test_openai_batch_body_fields() -> None:
    job = _parse(
        {
            "custom_id": "a",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {
                "model": "gpt-4o-mini",
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "text", "text": "look"},
                            {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG_B64}"}},
                        ],
                    }
                ],
                "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": SCHEMA}},
                "tools": [TOOL],
                "tool_choice": "required",
                "parallel_tool_calls": False,
                "stop": "END",
                "top_p": 0.3,
                "seed": 5,
                "user": "u1",
                "reasoning_effort": "low",
            },
        }
    )
    assert isinstance(job.response_format, JsonSchemaFormat) and job.response_format.json_schema.schema_ == SCHEMA
    assert (job.tool_choice, job.parallel_tool_calls, job.stop) == ("required", False, ["END"])
    assert (job.top_p, job.seed, job.user, job.reasoning.effort) == (0.3, 5, "u1", "low")
    assert job.messages[0].text == "look" and len(job.messages[0].images) == 1


def test_anthropic_batch_params() -> None:
    job = _parse(
        {
            "custom_id": "a",
            "params": {
                "model": "claude-sonnet-4-5",
                "max_tokens": 4096,
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "text", "text": "look"},
                            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG_B64}},
                            {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}},
                        ],
                    }
                ],
                "tools": [{"name": "f", "input_schema": {"type": "object"}}],
                "tool_choice": {"type": "tool", "name": "f", "disable_parallel_tool_use": True},
                "stop_sequences": ["END"],
                "top_p": 0.9,
                "metadata": {"user_id": "u2"},
                "output_config": {"format": {"type": "json_schema", "schema": SCHEMA}},
            },
        }
    )
    assert isinstance(job.tool_choice, NamedToolChoice) and job.tool_choice.function.name == "f"
    assert (job.parallel_tool_calls, job.stop, job.top_p, job.user) == (False, ["END"], 0.9, "u2")
    assert isinstance(job.response_format, JsonSchemaFormat)
    assert [p.image_url.url[:22] for p in job.messages[0].images] == [
        "data:image/png;base64,",
        "https://example.com/a.",
    ]


def test_anthropic_thinking_becomes_a_reasoning_budget() -> None:
    params = {"model": "claude-sonnet-4-5", "max_tokens": 8000, "messages": [{"role": "user", "content": "x"}]}
    job = _parse({"custom_id": "a", "params": {**params, "thinking": {"type": "enabled", "budget_tokens": 2048}}})
    assert job.reasoning.budget_tokens == 2048


def test_plain_line_fields() -> None:
    job = _parse(
        {
            "custom_id": "a",
            "prompt": "x",
            "model": "ollama:llama3.1",
            "response_format": {"type": "json_object"},
            "max_repairs": 2,
            "stop": ["a"],
            "seed": 1,
        }
    )
    assert job.response_format.type == "json_object" and job.max_repairs == 2 and job.seed == 1


@pytest.mark.parametrize(
    ("line", "param", "text"),
    [
        (
            {"custom_id": "a", "params": {"model": "m", "max_tokens": 9, "seed": 1, "messages": []}},
            "params.seed",
            None,
        ),
        (
            {"custom_id": "a", "prompt": "x", "model": "anthropic:claude-sonnet-4-5", "seed": 3},
            "seed",
            "anthropic does not support seed",
        ),
        (
            {"custom_id": "a", "params": {"model": "m", "max_tokens": 9, "tool_choice": {"type": "x"}, "messages": []}},
            "params.tool_choice",
            None,
        ),
    ],
)
def test_what_a_provider_cannot_do_is_an_error(line: dict[str, Any], param: str | None, text: str | None) -> None:
    with pytest.raises(LineError) as info:
        _parse(line)
    issues = info.value.issues
    if param is not None:
        assert param in [i.param for i in issues]
    if text is not None:
        assert any(text in i.message for i in issues)

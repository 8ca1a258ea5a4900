"""A misspelt key names the key meant, in a job as in the config (no I/O)."""

from __future__ import annotations

import pytest

from producers.core import validate_job
from producers.errors import InvalidJobError
from workers.contract import CompletionJob
from workers.contract.fieldnames import allowed_keys

HI = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        ({"max_token": 10}, "max_token: unknown key (did you mean 'max_tokens'?)"),
        ({"temprature": 0.2}, "temprature: unknown key (did you mean 'temperature'?)"),
        ({"messages": [{"role": "user", "contnet": "x"}]}, "messages.0.contnet: unknown key (did you mean 'content'?)"),
        (
            {"tools": [{"type": "function", "function": {"name": "f", "parameter": {}}}]},
            ".function.parameter: unknown key (did you mean 'parameters'?)",
        ),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schma": {}}}},
            ".schma: unknown key (did you mean 'schema'?)",  # the alias a caller writes, not schema_
        ),
        ({"frobnicate": 1}, "frobnicate: unknown key"),
    ],
)
def test_a_misspelt_job_field_names_the_field_meant(fields: dict, says: str) -> None:
    with pytest.raises(InvalidJobError) as refused:
        validate_job({"model": "openai:gpt-4o-mini", "messages": HI, **fields})
    message = str(refused.value)
    assert says in message and message.count("did you mean") == says.count("did you mean"), message
    assert [e["type"] for e in refused.value.errors if e["type"] == "extra_forbidden"]


def test_allowed_keys_reads_pydantic_locations_with_union_labels() -> None:
    assert "max_tokens" in allowed_keys(CompletionJob, ())
    assert "content" in allowed_keys(CompletionJob, ("messages", 0, "user"))

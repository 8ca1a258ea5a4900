"""The wire contract: validation, JSON round trips, and the producer/worker import boundary."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from pydantic import ValidationError

from workers.contract import (
    CompletionJob,
    CompletionResult,
    DeltaEvent,
    DoneEvent,
    JobKeys,
    Message,
    new_job_id,
    parse_event,
    split_model_id,
)


def test_producers_import_only_the_contract_and_connections_from_workers() -> None:
    code = "import sys, producers, producers.client, producers.aclient; print(sorted(m for m in sys.modules if m.startswith('workers')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert {
        m
        for m in json.loads(out.replace("'", '"'))
        if m != "workers" and m.split(".")[:2] not in (["workers", "contract"], ["workers", "connections"])
    } == set()


def test_a_job_round_trips_as_json() -> None:
    job = CompletionJob(
        model="openai:gpt-4o",
        fallbacks=["anthropic:claude-sonnet-4-5", "cheap"],
        messages=[
            Message(role="system", content="be brief"),
            Message(role="user", content="weather?"),
            Message.model_validate(
                {
                    "role": "assistant",
                    "tool_calls": [{"id": "c1", "function": {"name": "weather", "arguments": '{"city":"Oslo"}'}}],
                }
            ),
            Message(role="tool", tool_call_id="c1", content="sunny"),
        ],
        metadata={"custom_id": "req-1"},
    )
    again = CompletionJob.model_validate_json(job.model_dump_json())
    assert again == job
    assert again.chain == ["openai:gpt-4o", "anthropic:claude-sonnet-4-5", "cheap"]


@pytest.mark.parametrize(
    "bad",
    [
        {"model": "openai:gpt-4o"},
        {"model": "openai:gpt-4o", "messages": [{"role": "tool", "content": "x"}]},
        {"model": "openai:gpt-4o", "messages": [{"role": "user"}]},
        {"model": "openai:gpt-4o", "messages": [{"role": "user", "content": "x"}], "temperature": 3},
        {"model": "openai:gpt-4o", "messages": [{"role": "user", "content": "x"}], "id": "has space"},
        {"model": "openai:gpt-4o", "messages": [{"role": "user", "content": "x"}], "template": "t"},
        {"model": "openai:gpt-4o", "messages": [{"role": "user", "content": "x"}], "reply_to": "other:key"},
        {"model": ":gpt", "messages": [{"role": "user", "content": "x"}]},
    ],
)
def test_invalid_jobs_are_rejected(bad: dict) -> None:
    with pytest.raises(ValidationError):
        CompletionJob.model_validate(bad)


def test_ids_are_unguessable_and_keys_derive_from_them() -> None:
    ids = {new_job_id() for _ in range(1000)}
    assert len(ids) == 1000 and all(len(i) == 36 for i in ids)
    keys = JobKeys("abc")
    assert {keys.channel, keys.events, keys.result, keys.meta, keys.cancel, keys.claim} == {
        "llmq:job:{abc}:live",
        "llmq:job:{abc}:events",
        "llmq:job:{abc}:result",
        "llmq:job:{abc}:meta",
        "llmq:job:{abc}:cancel",
        "llmq:job:{abc}:claim",
    }


def test_model_ids() -> None:
    assert split_model_id("ollama:llama3.1:8b") == ("ollama", "llama3.1:8b")
    with pytest.raises(ValueError):
        split_model_id("default")


def test_events_parse_by_type() -> None:
    delta = parse_event(DeltaEvent(job_id="j", seq=3, text="hi").model_dump_json())
    assert isinstance(delta, DeltaEvent) and delta.text == "hi"
    # the worker's hand-encoded delta (hot path) parses to the same model
    raw = '{"type":"delta","job_id":"j","seq":3,"run":1,"ts":1.0,"text":"hi"}'
    assert parse_event(raw).model_dump(exclude={"ts"}) == delta.model_dump(exclude={"ts"})
    done = parse_event(
        DoneEvent(job_id="j", seq=4, result=CompletionResult(id="j", status="succeeded")).model_dump_json()
    )
    assert isinstance(done, DoneEvent) and done.result.status == "succeeded"


def test_repeated_tags_count_once_before_the_limit_of_eight() -> None:
    """A body's tags and the gateway header's may repeat: eight distinct ones pass, repeats and all."""
    from workers.contract import CompletionJob

    base = {"model": "openai:gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]}
    eight = [f"t{i}" for i in range(8)]
    assert CompletionJob.model_validate({**base, "tags": [*eight, "t0", "t3"]}).tags == eight
    with pytest.raises(ValidationError, match="at most 8"):
        CompletionJob.model_validate({**base, "tags": [*eight, "t8"]})
    with pytest.raises(ValidationError):
        CompletionJob.model_validate({**base, "tags": ["ok", 3]})

"""Structured outputs end to end: producer -> Redis -> worker -> simulator, in all three wire formats.

A valid answer is parsed; an invalid one gets one repair turn (a second full, charged call); two
invalid answers fail the job ``invalid_output`` with the raw content kept; a refusal is its own
outcome. The simulator answers JSON valid for the requested schema, and invalid JSON for each
``badjson`` item of the model's fault plan.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest
import redis
from celery.contrib.testing.worker import start_worker
from jsonschema import Draft202012Validator

from producers import Client
from simulator.app import SimulatorThread
from simulator.env import provider_config, provider_env
from simulator.structured import BAD_JSON
from tests.support.brokers import Broker
from workers.accounting.ledger import GLOBAL_SCOPE, Ledger
from workers.accounting.prices import PriceBook
from workers.runtime.app import close_runner, create_app
from workers.settings import Settings

SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string"},
        "temperature": {"type": "number"},
        "conditions": {"type": "array", "items": {"type": "string", "enum": ["sunny", "rain"]}, "minItems": 1},
        "wind": {"$ref": "#/$defs/wind"},
    },
    "required": ["city", "temperature", "conditions", "wind"],
    "additionalProperties": False,
    "$defs": {
        "wind": {
            "type": "object",
            "properties": {"kmh": {"type": "integer", "minimum": 0}},
            "required": ["kmh"],
            "additionalProperties": False,
        }
    },
}
FORMAT = {"type": "json_schema", "json_schema": {"name": "weather", "schema": SCHEMA, "strict": True}}
# Anthropic: Sonnet 4.5 has native structured outputs; Claude 3.5 Haiku answers through a forced tool
MODELS = ["openai:gpt-4o-mini", "anthropic:claude-sonnet-4-5", "anthropic:claude-3-5-haiku-20241022", "ollama:llama3.1"]


def _job(model: str, **extra: object) -> dict[str, object]:
    return {
        "model": model,
        "messages": [{"role": "user", "content": "Weather in Paris as JSON"}],
        "response_format": FORMAT,
        "max_tokens": 200,
        **extra,
    }


def _spent(redis_url: str) -> float:
    ledger = Ledger(redis.Redis.from_url(redis_url))
    status = next(s for s in ledger.show().scopes if s.scope == GLOBAL_SCOPE)
    ledger.client.close()
    return status.spent_usd


@pytest.mark.parametrize("stream", [True, False])
@pytest.mark.parametrize("model", MODELS)
def test_a_valid_answer_is_parsed(worker, client: Client, simulator: SimulatorThread, model: str, stream: bool) -> None:
    handle = client.submit(_job(model, stream=stream))
    events = list(handle.stream(timeout=30))
    result = handle.result(timeout=5)
    assert result.status == "succeeded", result.error
    assert result.parsed == json.loads(result.content)
    Draft202012Validator(SCHEMA).validate(result.parsed)
    assert result.repairs == 0 and result.refusal is None
    assert result.finish_reason == "stop" and not result.tool_calls
    assert simulator.simulator.stats.by_job[handle.id] == 1
    if stream:  # deltas still stream; validation happened at the end
        deltas = [e.text for e in events if e.type == "delta"]
        assert len(deltas) > 1 and "".join(deltas) == result.content


@pytest.mark.parametrize("stream", [True, False])
@pytest.mark.parametrize("model", MODELS)
def test_an_invalid_answer_is_repaired_once_and_charged_twice(
    worker, client: Client, simulator: SimulatorThread, redis_url: str, model: str, stream: bool
) -> None:
    handle = client.submit(_job(f"{model}~badjson", stream=stream))
    events = list(handle.stream(timeout=30))
    result = handle.result(timeout=5)
    assert result.status == "succeeded", result.error
    Draft202012Validator(SCHEMA).validate(result.parsed)
    assert result.repairs == 1
    assert simulator.simulator.stats.by_job[handle.id] == 2
    # both calls were metered: usage sums both turns, the ledger holds the cost of both
    price = PriceBook().lookup(model)
    assert result.cost_usd is not None and result.usage.prompt_tokens > 0
    if price.input_per_mtok is not None:
        assert Decimal(str(result.cost_usd)) == price.cost(result.usage)
    # the ledger settles each call in whole micro-dollars, rounded up: two settlements
    assert result.cost_usd <= _spent(redis_url) <= result.cost_usd + 2e-6
    kinds = [e.type for e in events]
    assert kinds.count("repair") == 1
    repair = next(e for e in events if e.type == "repair")
    assert repair.attempt == 1 and repair.errors
    if stream:
        after = kinds.index("repair")
        assert "".join(e.text for e in events[:after] if e.type == "delta") != result.content
        assert "".join(e.text for e in events[after:] if e.type == "delta") == result.content


@pytest.mark.parametrize("model", ["openai:gpt-4o-mini", "anthropic:claude-sonnet-4-5", "ollama:llama3.1"])
def test_invalid_twice_fails_invalid_output_with_the_content_kept(
    worker, client: Client, simulator: SimulatorThread, model: str
) -> None:
    handle = client.submit(_job(f"{model}~badjson,badjson"))
    events = list(handle.stream(timeout=30))
    result = handle.result(timeout=5)
    assert result.status == "failed"
    assert result.error is not None and result.error.type == "invalid_output"
    assert "not valid JSON" in result.error.message
    assert result.content == BAD_JSON and result.parsed is None
    assert simulator.simulator.stats.by_job[handle.id] == 2
    assert [e.type for e in events][-1] == "error"


def test_max_repairs_zero_fails_at_the_first_invalid_answer(worker, client: Client, simulator: SimulatorThread) -> None:
    handle = client.submit(_job("openai:gpt-4o-mini~badjson", max_repairs=0, stream=False))
    result = handle.result(timeout=30)
    assert result.status == "failed" and result.error is not None and result.error.type == "invalid_output"
    assert simulator.simulator.stats.by_job[handle.id] == 1


def test_a_schema_violation_is_sent_back_to_the_model(worker, client: Client, simulator: SimulatorThread) -> None:
    # the forced-tool path answers {} for badjson: valid JSON, but missing every required field
    handle = client.submit(_job("anthropic:claude-3-5-haiku-20241022~badjson", stream=True))
    events = list(handle.stream(timeout=30))
    repair = next(e for e in events if e.type == "repair")
    assert any("'city' is a required property" in err for err in repair.errors)
    assert handle.result(timeout=5).status == "succeeded"


@pytest.mark.parametrize("stream", [True, False])
def test_a_refusal_is_its_own_outcome(worker, client: Client, simulator: SimulatorThread, stream: bool) -> None:
    handle = client.submit(_job("openai:gpt-4o-mini~refusal", stream=stream))
    result = handle.result(timeout=30)
    assert result.status == "succeeded"
    assert result.refusal and "can't help" in result.refusal
    assert result.content == "" and result.parsed is None and result.repairs == 0
    assert simulator.simulator.stats.by_job[handle.id] == 1


def test_anthropic_refusal_stop_reason(worker, client: Client, simulator: SimulatorThread) -> None:
    handle = client.submit(_job("anthropic:claude-sonnet-4-5~refusal", stream=True))
    result = handle.result(timeout=30)
    assert result.status == "succeeded" and result.refusal and result.content == ""


def test_json_object_mode(worker, client: Client, simulator: SimulatorThread) -> None:
    handle = client.submit(_job("ollama:llama3.1", response_format={"type": "json_object"}, stream=False))
    result = handle.result(timeout=30)
    assert result.status == "succeeded" and result.parsed == {}


def test_stop_sequences_cut_the_answer(worker, client: Client, simulator: SimulatorThread) -> None:
    plain = client.submit({"model": "openai:gpt-4o-mini", "messages": [{"role": "user", "content": "go"}]})
    text = plain.result(timeout=30).content
    stop = text.split()[3]
    for model in ("openai:gpt-4o-mini", "anthropic:claude-sonnet-4-5", "ollama:llama3.1"):
        handle = client.submit({"model": model, "messages": [{"role": "user", "content": "go"}], "stop": [stop]})
        result = handle.result(timeout=30)
        assert result.status == "succeeded" and result.finish_reason == "stop"
        assert stop not in result.content and text.startswith(result.content), model


def test_tool_choice_required_forces_a_call(worker, client: Client, simulator: SimulatorThread) -> None:
    tool = {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    }
    for model in ("openai:gpt-4o-mini", "anthropic:claude-sonnet-4-5"):
        handle = client.submit(
            {
                "model": model,
                "messages": [{"role": "user", "content": "weather?"}],
                "tools": [tool],
                "tool_choice": "required",
            }
        )
        result = handle.result(timeout=30)
        assert result.status == "succeeded", result.error
        assert [c.function.name for c in result.tool_calls] == ["get_weather"], model
        assert "city" in json.loads(result.tool_calls[0].function.arguments)


def test_async_client_structured_output_and_refusal_of_what_a_provider_cannot(worker, redis_url: str) -> None:
    import asyncio

    from producers import AsyncClient, InvalidJobError

    async def main() -> None:
        async with AsyncClient(redis_url) as client:
            handle = await client.submit(_job("anthropic:claude-sonnet-4-5", stop=["never"], top_p=0.9, user="u"))
            events = [e async for e in handle.stream(timeout=30)]
            result = await handle.result(timeout=5)
            assert result.status == "succeeded" and events[-1].type == "done"
            Draft202012Validator(SCHEMA).validate(result.parsed)
            with pytest.raises(InvalidJobError, match="anthropic does not support seed"):
                await client.submit(_job("anthropic:claude-sonnet-4-5", seed=1))

    asyncio.run(main())


@pytest.fixture
def named_worker(redis_url: str, broker: Broker, tmp_path: Path, simulator: SimulatorThread) -> Iterator[object]:
    """A worker whose config names the simulator's Azure, Gemini and Bedrock wire formats."""
    config = tmp_path / "llmq.toml"
    config.write_text(provider_config(simulator.url))
    settings = Settings(
        redis_url=redis_url, broker_url=broker.url, queue=broker.queue, config=str(config),
        pool="threads", concurrency=4, coalesce_ms=20.0, claim_lease_s=10,
    )  # fmt: skip
    app = create_app(settings, provider_env=provider_env(simulator.url))
    with start_worker(app, pool="threads", concurrency=4, perform_ping_check=False, shutdown_timeout=10) as w:
        yield w
    close_runner(app)


@pytest.mark.parametrize("stream", [True, False])
@pytest.mark.parametrize("model", ["gemini:gemini-2.5-flash", "azure:gpt-4o", "bedrock:us.amazon.nova-micro-v1:0"])
def test_named_providers_answer_a_schema_with_refs(
    named_worker: object, client: Client, simulator: SimulatorThread, model: str, stream: bool
) -> None:
    """Gemini's responseSchema has no $ref: the $defs are inlined into what it is sent."""
    handle = client.submit(_job(model, stream=stream))
    result = handle.result(timeout=30)
    assert result.status == "succeeded", result.error
    Draft202012Validator(SCHEMA).validate(result.parsed)
    assert result.repairs == 0 and simulator.simulator.stats.by_job[handle.id] == 1

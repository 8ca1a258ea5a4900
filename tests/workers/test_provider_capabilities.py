"""The capability table for named providers: checked by type, and by an OpenAI-compatible server's
``params`` list; at submit (from what the workers published) and on the worker."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from producers import AsyncClient, Client, InvalidJobError
from workers.contract import CompletionJob
from workers.contract.capabilities import CapabilityError
from workers.contract.catalog import catalog_from_config
from workers.contract.providers import PROVIDERS_KEY, ProviderSpec, parse_provider_infos, provider_infos
from workers.runtime.presence import PresencePublisher
from workers.runtime.resources import publish_providers

SPECS = {
    "groq": ProviderSpec(type="openai", base_url="https://api.groq.com/openai/v1", params=["temperature", "tools"]),
    "azure-eu": ProviderSpec(type="azure", base_url="https://x.openai.azure.com"),
    "vertex": ProviderSpec(type="gemini"),
    "aws": ProviderSpec(type="bedrock", region="us-east-1"),
}
INFOS = provider_infos(SPECS)
WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}


def _job(**fields: Any) -> CompletionJob:
    return CompletionJob.model_validate({"model": "default", "messages": [{"role": "user", "content": "hi"}], **fields})


def _fields(model_id: str, **fields: Any) -> list[tuple[str, str]]:
    return [(e.provider, e.field) for e in _job(**fields).capability_problems(model_id, INFOS)]


def test_a_compatible_server_refuses_what_its_params_list_leaves_out() -> None:
    assert _fields("groq:llama-3.3-70b-versatile", temperature=0.2) == []
    assert _fields("groq:llama-3.3-70b-versatile", seed=7, top_p=0.5) == [("groq", "top_p"), ("groq", "seed")]
    fmt = {"type": "json_object"}
    assert _fields("groq:llama-3.3-70b-versatile", response_format=fmt) == [("groq", "response_format")]
    # an OpenAI-type entry without a list takes everything OpenAI takes
    assert _job(seed=7).capability_problems("openai:gpt-4o", INFOS) == []


def test_named_providers_are_checked_by_their_type_and_named_as_configured() -> None:
    assert _fields("aws:us.amazon.nova-micro-v1:0", seed=7) == [("aws", "seed")]
    assert _fields("vertex:gemini-2.5-flash", user="u-1") == [("vertex", "user")]
    assert _fields("azure-eu:gpt-4o", reasoning={"budget_tokens": 2048}, max_tokens=4096) == [
        ("azure-eu", "reasoning.budget_tokens")
    ]
    link = [{"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]
    job = {"messages": [{"role": "user", "content": link}]}
    assert _fields("aws:us.anthropic.claude-sonnet-4-5-20250929-v1:0", **job) == [("aws", "messages[0].image_url")]
    thinking = {"reasoning": {"effort": "low"}, "max_tokens": 4096}
    assert _fields("aws:us.anthropic.claude-sonnet-4-5-20250929-v1:0", **thinking) == []
    assert _fields("aws:us.amazon.nova-micro-v1:0", **thinking) == [("aws", "reasoning")]
    # Claude's thinking on Bedrock has the rules it has on Anthropic's API (the model id in any form)
    for claude in ("aws:us.anthropic.claude-sonnet-4-5-20250929-v1:0", "aws:anthropic.claude-3-7-sonnet-20250219-v1:0"):
        assert _fields(claude, **thinking, temperature=0.2, top_p=0.5) == [("aws", "temperature"), ("aws", "top_p")]
        assert _fields(claude, reasoning={"effort": "high"}, max_tokens=4096) == [("aws", "reasoning")]
        forced = {"tool_choice": "required", "tools": [WEATHER]}
        assert _fields(claude, **thinking, **forced) == [("aws", "tool_choice")]
    error = _job(seed=7).capability_problems("aws:m", INFOS)[0]
    assert isinstance(error, CapabilityError) and str(error).startswith("aws does not support seed: ")


def test_the_published_list_round_trips_without_secrets(redis_client: redis.Redis) -> None:
    redis_client.delete(PROVIDERS_KEY)
    publish_providers(redis_client, SPECS)
    published = parse_provider_infos(redis_client.hgetall(PROVIDERS_KEY))
    assert published == dict(sorted(INFOS.items()))
    assert {"anthropic", "openai", "ollama", "groq", "azure-eu", "vertex", "aws"} == set(published)


def test_submit_refuses_a_parameter_a_named_provider_does_not_take(redis_url: str, redis_client: redis.Redis) -> None:
    redis_client.delete(PROVIDERS_KEY)
    publish_providers(redis_client, SPECS)
    with Client(redis_url, queue="capabilities-test") as client:
        with pytest.raises(InvalidJobError) as info:
            client.validate(_job(model="openai:gpt-4o", fallbacks=["groq:llama-3.3-70b-versatile"], seed=3))
        assert "groq does not support seed" in str(info.value)
        assert info.value.errors[0]["loc"] == ("seed",)
        # what the server takes passes; so does a provider no worker published (the worker checks it)
        client.validate(_job(model="groq:llama-3.3-70b-versatile", temperature=0.1))
        client.validate(_job(model="elsewhere:some-model", seed=3))


#: A deployment whose route aliases and model families reach named providers.
ROUTED = catalog_from_config(
    {
        "routes": {
            "fast": ["openai:gpt-4o-mini", "groq:llama-3.3-70b-versatile"],
            "eu": ["aws:eu.amazon.nova-pro-v1:0"],
        },
        "model_families": {"llama*": "groq"},
        "providers": {name: {"type": spec.type} for name, spec in SPECS.items()},
    }
)


@pytest.fixture
def routed_queue(redis_client: redis.Redis) -> Iterator[str]:
    """A queue whose (stand-in) worker published ROUTED as its catalog and SPECS as its providers."""
    redis_client.delete(PROVIDERS_KEY)
    publish_providers(redis_client, SPECS)
    queue = f"routed-{uuid.uuid4().hex[:8]}"
    publisher = PresencePublisher(redis_client, f"w-{queue}", [queue], ROUTED)
    publisher.start()
    try:
        yield queue
    finally:
        publisher.stop()


#: (job fields, the refusal): a named provider reached through a route alias or a bare name.
ROUTED_REFUSALS = [
    ({"model": "fast", "seed": 3}, "groq does not support seed"),  # the params list, through an alias
    ({"model": "gpt-4o", "fallbacks": ["llama-3.3-70b"], "seed": 3}, "groq does not support seed"),  # a family
    ({"model": "eu", "user": "u-1"}, "aws does not support user"),  # the provider's type, through an alias
]


@pytest.mark.parametrize(("fields", "says"), ROUTED_REFUSALS, ids=["alias-params", "family-params", "alias-type"])
def test_route_aliases_and_bare_names_are_checked_against_the_providers_they_reach(
    redis_url: str, redis_client: redis.Redis, routed_queue: str, fields: dict[str, Any], says: str
) -> None:
    job = _job(**fields)
    with Client(redis_url, queue=routed_queue) as client:
        with pytest.raises(InvalidJobError, match=says):
            client.validate(job)
        with pytest.raises(InvalidJobError, match=says):
            client.check_models(job)  # what llmq batch checks every line with before enqueueing any
        # what the providers take passes, through the same names
        client.validate(job.model_copy(update={"seed": None, "user": None, "temperature": 0.2}))
    # with nothing published but the catalog, a provider's type still refuses what it cannot do
    redis_client.delete(PROVIDERS_KEY)
    with Client(redis_url, queue=routed_queue) as client:
        if "aws" in says:
            with pytest.raises(InvalidJobError, match=says):
                client.validate(job)
        else:
            client.validate(job)  # no params list known here: the worker checks it


@pytest.mark.parametrize(("fields", "says"), ROUTED_REFUSALS, ids=["alias-params", "family-params", "alias-type"])
async def test_the_async_client_the_gateway_submits_with_refuses_the_same(
    redis_url: str, routed_queue: str, fields: dict[str, Any], says: str
) -> None:
    async with AsyncClient(redis_url, queue=routed_queue) as client:
        with pytest.raises(InvalidJobError, match=says):
            await client.validate(_job(**fields))

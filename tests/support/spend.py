"""What the crash tests read back from a real Redis: the month's global spend, one call's price, stored results."""

from __future__ import annotations

import tomllib
from collections.abc import Callable
from typing import Any

import redis

from simulator.env import provider_config
from simulator.protocols.azure import AzureProtocol
from simulator.protocols.bedrock import BedrockProtocol
from simulator.protocols.gemini import GeminiProtocol
from workers.accounting.ledger import GLOBAL_SCOPE, Ledger, to_micros
from workers.accounting.prices import PriceBook, price_sources
from workers.accounting.tokens import TokenCounter
from workers.contract import Message, RequestParams, Usage
from workers.contract.providers import ProviderSpec
from workers.llm.base import ChatRequest
from workers.llm.bedrock import build_body as bedrock_body
from workers.llm.gemini import build_body as gemini_body
from workers.llm.openai import OpenAIProvider

__all__ = ["global_spent_usd", "one_call_usd", "results_stored"]


def _openai_body(model: str, request: ChatRequest) -> dict[str, Any]:
    provider = OpenAIProvider(None, api_key=None, base_url="http://sim/v1")  # type: ignore[arg-type]
    return provider.build_body(model, request, stream=True)


def load_provider_specs_text(text: str) -> dict[str, ProviderSpec]:
    return {name: ProviderSpec.model_validate(entry) for name, entry in tomllib.loads(text)["providers"].items()}


#: The simulated named providers: the simulator's protocol, our request body, the route's method.
SIMULATED: dict[str, tuple[Any, Callable[[str, ChatRequest], dict[str, Any]], dict[str, str]]] = {
    "azure": (AzureProtocol(), _openai_body, {}),
    "gemini": (GeminiProtocol(), lambda _, request: gemini_body(request), {"method": "streamGenerateContent"}),
    "bedrock": (BedrockProtocol(), lambda _, request: bedrock_body(request), {"method": "converse-stream"}),
}


def one_call_usd(model: str, prompt: list[dict[str, Any]], completion_tokens: int) -> float:
    """What the ledger charges for one served call of ``prompt`` answered with ``completion_tokens`` tokens.

    A built-in provider's prompt is counted with its tokenizer (what the simulator reports too); a
    simulated named provider's (``simulator.env.provider_config``: azure, gemini, bedrock) is what the
    simulator reports for the very body our provider sends, priced by that provider's type.
    """
    provider, _, name = model.partition(":")
    messages = [Message(**m) for m in prompt]
    if provider in SIMULATED:
        protocol, build, route = SIMULATED[provider]
        body = build(name, ChatRequest(messages=messages, params=RequestParams(max_tokens=completion_tokens)))
        parsed = protocol.parse_routed(
            body, {"model": name, "deployment": name, **route}, {"api-version": "2024-10-21"}
        )
        prompt_tokens = protocol.prompt_tokens(parsed)
        prices = PriceBook(sources=price_sources(load_provider_specs_text(provider_config("http://sim"))))
    else:
        prompt_tokens = TokenCounter().count(model, messages).tokens
        prices = PriceBook()
    cost = prices.lookup(model).cost(Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens))
    return to_micros(cost) / 1e6


def global_spent_usd(url: str) -> float:
    """The month's settled global spend in the ledger at ``url``."""
    client = redis.Redis.from_url(url)
    try:
        return next(s for s in Ledger(client).show().scopes if s.scope == GLOBAL_SCOPE).spent_usd
    finally:
        client.close()


def results_stored(url: str, ids: list[str]) -> int | None:
    """How many of ``ids`` have a stored result; None while Redis does not answer (a restart)."""
    client = redis.Redis.from_url(url, socket_timeout=10)
    try:
        pipe = client.pipeline(transaction=False)
        for job_id in ids:
            pipe.exists(f"llmq:job:{{{job_id}}}:result")
        return int(sum(pipe.execute()))
    except redis.RedisError:
        return None
    finally:
        client.close()

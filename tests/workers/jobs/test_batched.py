"""Where a job that may wait goes (``BatchLane.choose``): a provider batch, flex or live, by its
``batch`` field, its deadline against ``[batch]`` window + margin, and its model's provider."""

from __future__ import annotations

import json
from collections.abc import Iterator
from decimal import Decimal

import pytest
import redis

from tests.support.requests import chat_request
from workers.accounting.prices import PriceBook
from workers.contract import CompletionJob, Message
from workers.jobs.batched import BatchLane
from workers.jobs.batchstate import BatchStore
from workers.llm.anthropic import AnthropicProvider
from workers.llm.httpclient import HTTPClient
from workers.llm.openai import OpenAIProvider
from workers.llm.registry import ProviderRegistry
from workers.routes import BatchConfig

WINDOW, MARGIN, LIVE_MARGIN = 1000.0, 100.0, 50.0


@pytest.fixture(scope="module")
def http() -> Iterator[HTTPClient]:
    client = HTTPClient()
    yield client
    client.close()


def lane(http: HTTPClient, **config: object) -> BatchLane:
    registry = ProviderRegistry(
        {
            "openai": OpenAIProvider(http, api_key="sk-test"),
            "anthropic": AnthropicProvider(http, api_key="sk-test"),
            "groq": OpenAIProvider(http, api_key="sk-test", base_url="http://127.0.0.1:9/v1", name="groq"),
        }
    )
    settings = BatchConfig(window_s=WINDOW, margin_s=MARGIN, live_margin_s=LIVE_MARGIN, **config)  # type: ignore[arg-type]
    store = BatchStore(redis.Redis())  # no command is sent: choose() reads no Redis
    return BatchLane(store, registry, settings, None, PriceBook({}), keep_s=60)


def job(model: str, batch: str | None, **extra: object) -> CompletionJob:
    return CompletionJob.model_validate(
        {"model": model, "messages": [{"role": "user", "content": "hi"}], "batch": batch, **extra}
    )


@pytest.mark.parametrize(
    ("batch", "model", "remaining", "route"),
    [
        (None, "openai:gpt-4o-mini", None, "live"),  # unset: live
        ("allow", "openai:gpt-4o-mini", None, "batch"),
        ("allow", "anthropic:claude-sonnet-4-5", 60.0, "batch"),  # allow: a batch unless the deadline is very near
        ("allow", "openai:gpt-4o-mini", 40.0, "live"),  # ... within live_margin_s
        ("auto", "openai:gpt-4o-mini", None, "batch"),  # no deadline: no hurry
        ("auto", "anthropic:claude-sonnet-4-5", WINDOW + MARGIN, "batch"),  # room for window + margin
        ("auto", "anthropic:claude-sonnet-4-5", WINDOW + MARGIN - 1, "live"),
        ("auto", "openai:o4-mini", WINDOW, "flex"),  # too short for a batch: flex where the model has it
        ("auto", "openai:gpt-4o-mini", WINDOW, "live"),  # no flex for this model
        ("allow", "groq:llama-3.1-8b-instant", None, "live"),  # a named compatible server: no batch API
    ],
)
def test_where_a_job_goes(http: HTTPClient, batch: str | None, model: str, remaining: float | None, route: str) -> None:
    the_job = job(model, batch)
    assert lane(http).choose(the_job, [model], remaining) == route


def test_worker_tools_and_a_disabled_table_run_live(http: HTTPClient) -> None:
    with_tools = job("openai:gpt-4o-mini", "allow", tools=["calculate"])
    assert lane(http).choose(with_tools, ["openai:gpt-4o-mini"], None) == "live"
    assert lane(http, enabled=False).choose(job("openai:gpt-4o-mini", "allow"), ["openai:gpt-4o-mini"], None) == "live"


def test_flex_is_the_service_tier_in_the_body(http: HTTPClient) -> None:
    request = chat_request([Message(role="user", content="hi")], max_tokens=8)
    request.service_tier = "flex"
    body = json.loads(OpenAIProvider(http, api_key="sk-test").body_bytes("o4-mini", request))
    assert body["service_tier"] == "flex"
    assert "service_tier" not in json.loads(
        OpenAIProvider(http, api_key="sk-test").body_bytes(
            "o4-mini", chat_request([Message(role="user", content="hi")])
        )
    )
    assert BatchConfig().discount == 0.5 and Decimal(str(BatchConfig().discount)) * 2 == 1


def test_a_models_batch_discount_wins_over_the_tables(http: HTTPClient) -> None:
    from workers.jobs.batched import model_discounts
    from workers.routes import LLMQConfig

    config = LLMQConfig.model_validate({"models": {"anthropic:claude-sonnet-4-5": {"batch_discount": 0.6}}})
    discounts = model_discounts(config)
    assert discounts == {"anthropic:claude-sonnet-4-5": 0.6}
    the_lane = BatchLane(
        BatchStore(redis.Redis()), ProviderRegistry({}), BatchConfig(), None, PriceBook({}), keep_s=60,
        model_discounts=discounts,
    )  # fmt: skip
    assert the_lane.discount("anthropic:claude-sonnet-4-5") == Decimal("0.6")
    assert the_lane.discount("openai:gpt-4o") == Decimal("0.5")

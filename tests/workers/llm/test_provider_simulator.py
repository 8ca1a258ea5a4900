"""Every provider type against the built-in simulator: answers, tool calls and every fault it scripts."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from simulator.app import SimulatorThread
from tests.support.doubles import provider_for
from tests.support.replay_server import local_client
from tests.support.requests import chat_request
from workers.contract import Message, Tool, ToolFunction
from workers.llm.base import ChatRequest, Provider
from workers.llm.errors import (
    AuthenticationError,
    ContentFilteredError,
    ContextLengthExceededError,
    IncompleteStreamError,
    InsufficientQuotaError,
    LLMQError,
    ModelNotFoundError,
    OverloadedError,
    ProviderTimeoutError,
    RateLimitedError,
    RetryableProviderError,
    ServerError,
)
from workers.llm.httpclient import HTTPClient

PROVIDERS = ["openai", "anthropic", "ollama", "azure", "gemini", "bedrock"]
LOOKUP = Tool(
    function=ToolFunction(name="lookup", parameters={"type": "object", "properties": {"q": {"type": "string"}}})
)


@pytest.fixture(scope="module")
def http() -> Iterator[HTTPClient]:
    with local_client(read_timeout=2.0) as client:
        yield client


def sim_provider(name: str, http: HTTPClient, sim: SimulatorThread) -> Provider:
    return provider_for(name, http, sim.url, api_key="sk-sim")


def request(fault: str | None = None, **fields: Any) -> ChatRequest:
    headers = {"x-llmq-sim-fault": fault} if fault else {}
    return chat_request([Message(role="user", content="Say hello")], headers=headers, **({"max_tokens": 50} | fields))


@pytest.mark.parametrize("name", PROVIDERS)
def test_answers_streamed_and_whole(name: str, http: HTTPClient, simulator: SimulatorThread) -> None:
    provider = sim_provider(name, http, simulator)
    with provider.stream("m", request()) as stream:
        deltas = list(stream)
    assert len(deltas) > 1 and stream.completed and stream.finish_reason == "stop"
    assert stream.usage is not None and not stream.usage.estimated and stream.usage.completion_tokens > 0
    whole = provider.complete("m", request())
    assert whole.text == stream.text and whole.finish_reason == "stop" and whole.usage == stream.usage


@pytest.mark.parametrize(
    ("name", "fault", "read", "written"),
    [("openai", "cache@3", 3, 0), ("anthropic", "cache@3", 3, 0), ("anthropic", "cachew@2", 0, 2)],
)
@pytest.mark.parametrize("stream", [True, False], ids=["stream", "complete"])
def test_prompt_cache_counts(
    name: str, fault: str, read: int, written: int, stream: bool, http: HTTPClient, simulator: SimulatorThread
) -> None:
    """Cache reads/writes are part of ``prompt_tokens`` (Anthropic's ``input_tokens`` excludes them)."""
    provider = sim_provider(name, http, simulator)
    plain = provider.complete("m", request()).usage
    if stream:
        with provider.stream("m", request(fault)) as s:
            list(s)
        usage = s.usage
    else:
        usage = provider.complete("m", request(fault)).usage
    assert plain is not None and usage is not None and plain.cached_tokens == plain.cache_write_tokens == 0
    assert usage.prompt_tokens == plain.prompt_tokens
    assert (usage.cached_tokens, usage.cache_write_tokens) == (read, written)


@pytest.mark.parametrize("name", PROVIDERS)
@pytest.mark.parametrize("stream", [True, False], ids=["stream", "complete"])
def test_tool_calls(name: str, stream: bool, http: HTTPClient, simulator: SimulatorThread) -> None:
    provider = sim_provider(name, http, simulator)
    req = request("tools@2", tools=[LOOKUP])
    if stream:
        with provider.stream("m", req) as s:
            list(s)
        completion = s.to_completion()
    else:
        completion = provider.complete("m", req)
    assert completion.finish_reason == "tool_calls"
    assert [c.function.name for c in completion.tool_calls] == ["lookup", "lookup"]
    assert all(isinstance(json.loads(c.function.arguments), dict) and c.id for c in completion.tool_calls)


HTTP_FAULTS: list[tuple[str, type[LLMQError]]] = [
    ("429", RateLimitedError),
    ("quota", InsufficientQuotaError),
    ("context", ContextLengthExceededError),
    ("401", AuthenticationError),
    ("404", ModelNotFoundError),
    ("503", ServerError),
    ("529", OverloadedError),
]


@pytest.mark.parametrize("name", PROVIDERS)
@pytest.mark.parametrize(("fault", "cls"), HTTP_FAULTS, ids=[f for f, _ in HTTP_FAULTS])
@pytest.mark.parametrize("stream", [True, False], ids=["stream", "complete"])
def test_http_faults(
    name: str, fault: str, cls: type[LLMQError], stream: bool, http: HTTPClient, simulator: SimulatorThread
) -> None:
    provider = sim_provider(name, http, simulator)
    with pytest.raises(LLMQError) as info:
        if stream:
            list(provider.stream("m", request(fault)))
        else:
            provider.complete("m", request(fault))
    exc = info.value
    # Gemini has no 529: an overloaded model is a 503 UNAVAILABLE there
    assert isinstance(exc, ServerError if (name, fault) == ("gemini", "529") else cls), repr(exc)
    if fault == "429":  # Bedrock's throttling says nothing about when to come back
        assert exc.retry_after == (None if name == "bedrock" else pytest.approx(1.0))
    assert "sk-sim" not in repr(exc.args)


STREAM_FAULTS: list[tuple[str, type[LLMQError]]] = [
    ("midstream", RetryableProviderError),
    ("cut", IncompleteStreamError),
    ("malformed", IncompleteStreamError),
    ("stall@10", ProviderTimeoutError),
]


@pytest.mark.parametrize("name", PROVIDERS)
@pytest.mark.parametrize(("fault", "cls"), STREAM_FAULTS, ids=[f for f, _ in STREAM_FAULTS])
def test_stream_faults(
    name: str, fault: str, cls: type[LLMQError], http: HTTPClient, simulator: SimulatorThread
) -> None:
    stream = sim_provider(name, http, simulator).stream("m", request(fault))
    with pytest.raises(cls):
        list(stream)
    assert stream.text and not stream.completed  # partial text seen before the failure


@pytest.mark.parametrize("name", ["openai", "azure", "gemini", "bedrock"])
@pytest.mark.parametrize("stream", [True, False], ids=["stream", "complete"])
def test_a_content_filter_stop_is_content_filtered_not_retried(
    name: str, stream: bool, http: HTTPClient, simulator: SimulatorThread
) -> None:
    """The ``filter`` fault: each format's own filter stop (``content_filter``, ``SAFETY``,
    ``content_filtered``) halfway through the answer."""
    provider = sim_provider(name, http, simulator)
    with pytest.raises(ContentFilteredError) as info:
        if stream:
            list(provider.stream("m", request("filter")))
        else:
            provider.complete("m", request("filter"))
    assert not info.value.retryable and not info.value.falls_back


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "complete"])
def test_a_filter_stop_on_anthropic_and_ollama_ends_the_answer(
    stream: bool, http: HTTPClient, simulator: SimulatorThread
) -> None:
    """Anthropic says it as its ``refusal`` stop reason; Ollama has no filter (a plain stop)."""
    for name, reason in (("anthropic", "refusal"), ("ollama", "stop")):
        provider = sim_provider(name, http, simulator)
        if stream:
            with provider.stream("m", request("filter")) as s:
                list(s)
            completion = s.to_completion()
        else:
            completion = provider.complete("m", request("filter"))
        assert completion.native_finish_reason == reason, name


def test_an_azure_api_version_before_stream_options_streams_without_them(
    http: HTTPClient, simulator: SimulatorThread
) -> None:
    """Azure before 2024-09-01 refuses ``stream_options`` (the simulator too): not sent, the stream
    has no usage chunk, and the job's usage is estimated from the pre-count and the text."""
    from workers.llm.azure import AzureOpenAIProvider

    for version, usage in (("2024-06-01", False), ("2024-10-21", True)):
        provider = AzureOpenAIProvider(http, api_key="sk-sim", base_url=simulator.url, api_version=version)
        assert ("stream_options" in provider.build_body("m", request(), stream=True)) is usage
        with provider.stream("gpt-4o", request()) as stream:
            text = "".join(stream)
        assert text and stream.completed and (stream.usage is not None) is usage, version


def test_gemini_takes_the_apis_host_alone_and_its_own_model_names(http: HTTPClient, simulator: SimulatorThread) -> None:
    """``base_url`` as the API's host without its version (``https://generativelanguage.googleapis.com``),
    and ``models/gemini-2.5-flash`` as the API's model list names it: both reach the model."""
    from workers.llm.gemini import GeminiProvider

    provider = GeminiProvider(http, api_key="sk-sim", base_url=simulator.url)
    assert provider.complete("models/gemini-2.5-flash", request()).text
    assert simulator.simulator.stats.as_json()["by_model"] == {"gemini-2.5-flash": 1}

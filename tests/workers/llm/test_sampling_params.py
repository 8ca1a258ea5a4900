"""The sampling parameters only some APIs have (``presence_penalty``, ``frequency_penalty``,
``logit_bias``, ``logprobs``/``top_logprobs``, ``n``): the capability table refuses each where the
provider has none, the adapters that have one translate it, and log probabilities and the extra
answers come back from the simulator's real HTTP answers, streamed and whole."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import ValidationError

from simulator.app import SimulatorThread
from tests.support.doubles import provider_for
from tests.support.replay_server import local_client
from tests.support.requests import chat_request
from workers.contract import CompletionJob, Message
from workers.contract.capabilities import SAMPLING
from workers.contract.providers import PROVIDER_TYPES, ProviderInfo
from workers.guards.model import request_tokens
from workers.llm.base import ChatRequest, Completion
from workers.llm.httpclient import HTTPClient
from workers.llm.httpprovider import HTTPProvider

ASKED: dict[str, dict[str, Any]] = {
    "presence_penalty": {"presence_penalty": 0.5},
    "frequency_penalty": {"frequency_penalty": -0.5},
    "logit_bias": {"logit_bias": {"50256": -100}},
    "logprobs": {"logprobs": True, "top_logprobs": 2},
    "n": {"n": 2},
}


def job(model: str, **fields: Any) -> CompletionJob:
    return CompletionJob(model=model, messages=[{"role": "user", "content": "hi"}], **fields)


@pytest.mark.parametrize("name", sorted(ASKED))
@pytest.mark.parametrize("kind", PROVIDER_TYPES)
def test_each_parameter_is_taken_or_refused_at_submit_naming_the_provider(kind: str, name: str) -> None:
    model = f"{kind}:some-model"
    if kind in SAMPLING[name]:
        assert job(model, **ASKED[name]).capability_problems(model) == []
        return
    with pytest.raises(ValidationError, match=f"{kind} does not support {name}: .* has no {name}"):
        job(model, **ASKED[name])


def test_a_named_provider_is_refused_by_its_type_and_a_compatible_servers_params_list() -> None:
    providers = {
        "claude-aws": ProviderInfo(name="claude-aws", type="bedrock"),
        "groq": ProviderInfo(name="groq", type="openai", params=["temperature", "n"]),
    }
    found = job("openai:x", presence_penalty=1.0).capability_problems("claude-aws:m", providers)
    assert [(e.provider, e.field) for e in found] == [("claude-aws", "presence_penalty")]
    assert job("openai:x", n=2).capability_problems("groq:m", providers) == []
    found = job("openai:x", logprobs=True).capability_problems("groq:m", providers)
    assert [(e.provider, e.field) for e in found] == [("groq", "logprobs")]


def test_the_contract_refuses_what_no_provider_could_answer() -> None:
    with pytest.raises(ValidationError, match="top_logprobs needs logprobs"):
        job("openai:x", top_logprobs=3)
    with pytest.raises(ValidationError, match="n > 1 cannot be combined with tools"):
        job("openai:x", n=2, tools=[{"type": "function", "function": {"name": "f"}}])
    with pytest.raises(ValidationError, match="n > 1 cannot be combined with a JSON response_format"):
        job("openai:x", n=2, response_format={"type": "json_object"})
    with pytest.raises(ValidationError, match="Gemini generates at most 8"):
        job("gemini:gemini-2.5-flash", n=9)
    assert job("openai:x", n=1, logprobs=False).capability_problems("anthropic:claude-sonnet-4-5") == []


@pytest.fixture(scope="module")
def http() -> Iterator[HTTPClient]:
    with local_client(read_timeout=5.0) as client:
        yield client


def sampled(**fields: Any) -> ChatRequest:
    return chat_request([Message(role="user", content="Say hello")], **({"max_tokens": 40} | fields))


def test_the_adapters_that_have_them_translate_them(http: HTTPClient) -> None:
    asked = sampled(
        presence_penalty=0.5, frequency_penalty=-0.5, logit_bias={"7": 3}, logprobs=True, top_logprobs=2, n=2
    )
    for kind in ("openai", "azure"):
        provider = provider_for(kind, http, "http://127.0.0.1:9")
        assert isinstance(provider, HTTPProvider)
        body = provider.build_body("m", asked, stream=True)
        assert {
            k: body[k] for k in ("presence_penalty", "frequency_penalty", "logit_bias", "logprobs", "top_logprobs", "n")
        } == {
            "presence_penalty": 0.5,
            "frequency_penalty": -0.5,
            "logit_bias": {"7": 3},
            "logprobs": True,
            "top_logprobs": 2,
            "n": 2,
        }
    gemini = provider_for("gemini", http, "http://127.0.0.1:9")
    assert isinstance(gemini, HTTPProvider)
    config = gemini.build_body(
        "m", sampled(presence_penalty=0.5, frequency_penalty=-0.5, logprobs=True, top_logprobs=2, n=2), stream=True
    )["generationConfig"]
    assert isinstance(config, dict)
    assert {
        k: config[k] for k in ("presencePenalty", "frequencyPenalty", "candidateCount", "responseLogprobs", "logprobs")
    } == {
        "presencePenalty": 0.5,
        "frequencyPenalty": -0.5,
        "candidateCount": 2,
        "responseLogprobs": True,
        "logprobs": 2,
    }
    ollama = provider_for("ollama", http, "http://127.0.0.1:9")
    assert isinstance(ollama, HTTPProvider)
    options = ollama.build_body("m", sampled(presence_penalty=0.5, frequency_penalty=-0.5), stream=True)["options"]
    assert isinstance(options, dict) and options["presence_penalty"] == 0.5 and options["frequency_penalty"] == -0.5
    # nothing is sent for what was not asked
    plain = provider_for("openai", http, "http://127.0.0.1:9")
    assert isinstance(plain, HTTPProvider)
    assert not set(plain.build_body("m", sampled(), stream=True)) & {"n", "logprobs", "logit_bias", "presence_penalty"}


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "whole"])
def test_ollama_returns_logprobs(stream: bool, http: HTTPClient, simulator: SimulatorThread) -> None:
    provider = provider_for("ollama", http, simulator.url)
    assert isinstance(provider, HTTPProvider)
    assert provider.build_body("m", sampled(logprobs=True, top_logprobs=3), stream=stream)["top_logprobs"] == 3
    single = provider.complete("m", sampled())
    asked = sampled(logprobs=True, top_logprobs=3)
    if stream:
        with provider.stream("m", asked) as s:
            list(s)
        answer = s.to_completion()
    else:
        answer = provider.complete("m", asked)
    _check(answer, single, top=3, answers=1)


def _check(answer: Completion, single: Completion, top: int, answers: int) -> None:
    assert answer.text == single.text and answer.finish_reason == "stop"
    assert answer.logprobs is not None and "".join(t.token for t in answer.logprobs) == answer.text
    assert all(len(t.top_logprobs) == top and t.logprob <= 0 for t in answer.logprobs)
    assert [a.index for a in answer.alternatives] == list(range(1, answers))
    for alt in answer.alternatives:
        assert alt.content == answer.text and alt.finish_reason == "stop"
        assert alt.logprobs is not None and "".join(t.token for t in alt.logprobs) == alt.content
    assert answer.usage is not None and single.usage is not None
    assert answer.usage.completion_tokens == answers * single.usage.completion_tokens


@pytest.mark.parametrize("kind", ["openai", "azure", "gemini"])
@pytest.mark.parametrize("stream", [True, False], ids=["stream", "whole"])
def test_logprobs_and_the_other_answers_come_back(
    kind: str, stream: bool, http: HTTPClient, simulator: SimulatorThread
) -> None:
    provider = provider_for(kind, http, simulator.url, api_key="sk-sim")
    single = provider.complete("m", sampled())
    assert single.logprobs is None and single.alternatives == []
    asked = sampled(logprobs=True, top_logprobs=2, n=3, presence_penalty=0.1)
    if stream:
        with provider.stream("m", asked) as s:
            deltas = list(s)
        assert "".join(deltas) == single.text  # only the first answer streams
        answer = s.to_completion()
    else:
        answer = provider.complete("m", asked)
    _check(answer, single, top=2, answers=3)


def test_the_rate_limits_count_max_tokens_for_every_answer() -> None:
    assert request_tokens(sampled(n=3, max_tokens=100)) - request_tokens(sampled(max_tokens=100)) == 200

"""The provider batch clients over real HTTP against the simulator: every step, finding a lost
batch or upload again, results, cancel, cleanup; a batch line's body is the live call's, byte for byte."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx2
import pytest

from simulator.app import SimConfig, SimulatorThread
from tests.support.requests import chat_request
from workers.contract import Message
from workers.llm.anthropic import AnthropicProvider
from workers.llm.anthropic_batch import AnthropicBatchAPI
from workers.llm.batchapi import BatchAPI, line_id
from workers.llm.errors import AuthenticationError, RateLimitedError
from workers.llm.httpclient import HTTPClient, HTTPSettings
from workers.llm.openai import OpenAIProvider
from workers.llm.openai_batch import OpenAIBatchAPI


@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatorThread]:
    with SimulatorThread(SimConfig()) as running:
        yield running


@pytest.fixture(scope="module")
def http() -> Iterator[HTTPClient]:
    client = HTTPClient(HTTPSettings(http2=False))
    yield client
    client.close()


@pytest.fixture(autouse=True)
def _fresh(sim: SimulatorThread) -> None:
    httpx2.post(f"{sim.url}/_sim/reset")


def apis(sim: SimulatorThread, http: HTTPClient) -> dict[str, BatchAPI]:
    return {
        "openai": OpenAIBatchAPI(OpenAIProvider(http, api_key="sk-test", base_url=f"{sim.url}/v1"), http),
        "anthropic": AnthropicBatchAPI(AnthropicProvider(http, api_key="sk-test", base_url=sim.url), http),
    }


def request(text: str) -> Any:
    return chat_request([Message(role="user", content=text)], max_tokens=12)


def sim_stats(sim: SimulatorThread) -> dict[str, Any]:
    return httpx2.get(f"{sim.url}/_sim/stats").json()["batches"]


@pytest.mark.parametrize("name", ["openai", "anthropic"])
def test_a_batch_from_upload_to_results(name: str, sim: SimulatorThread, http: HTTPClient) -> None:
    api = apis(sim, http)[name]
    model = "gpt-4o-mini" if name == "openai" else "claude-x"
    lines = [api.line(line_id("k1", i), model + ("~503" if i == 3 else ""), request(f"q{i}")) for i in range(5)]
    # one model per OpenAI file: the line with a fault is its own model string there
    lines = lines[:3] if name == "openai" else lines
    upload = api.upload("k1", lines)
    assert (upload is not None) == (name == "openai")
    remote = api.create("k1", model, upload, lines)
    assert remote.state in ("running", "ended") and remote.total == len(lines)
    ended = api.get(remote.id)
    assert ended.state == "ended"
    outcomes = list(api.results(ended, model))
    assert sorted(o.custom_id for o in outcomes) == sorted(line_id("k1", i) for i in range(len(lines)))
    for outcome in outcomes:
        if outcome.custom_id == line_id("k1", 3):
            assert outcome.kind == "errored" and outcome.error is not None and outcome.error.retryable
            continue
        answer = api.answer(model, request("x"), outcome)
        assert outcome.kind == "succeeded" and answer.text and answer.usage and answer.usage.completion_tokens == 12
    api.discard(ended, upload)
    if name == "openai":
        files = httpx2.get(f"{sim.url}/v1/files").json()["data"]
        assert files == []


def test_a_batch_line_carries_the_live_calls_body_byte_for_byte() -> None:
    sent: list[bytes] = []

    def live(req: httpx2.Request) -> httpx2.Response:
        sent.append(req.content)
        return httpx2.Response(500, json={"error": {"message": "no", "type": "server_error"}})

    http = HTTPClient(HTTPSettings(http2=False), transport=httpx2.MockTransport(live))
    try:
        for provider, api_cls in (
            (OpenAIProvider(http, api_key="sk-test", base_url="http://x/v1"), OpenAIBatchAPI),
            (AnthropicProvider(http, api_key="sk-test", base_url="http://x"), AnthropicBatchAPI),
        ):
            req = chat_request(
                [Message(role="system", content="be brief"), Message(role="user", content='héllo \u2028 "q"')],
                max_tokens=7,
                temperature=0.3,
                stop=["END"],
                seed=5,
            )
            with pytest.raises(Exception):  # noqa: B017 - the 500 we answered; the body is what counts
                provider.complete("some-model", req)
            line = api_cls(provider, http).line("k-0", "some-model", req)  # type: ignore[arg-type]
            key = b'"body": ' if api_cls is OpenAIBatchAPI else b'"params": '
            assert line[line.index(key) + len(key) : -1] == sent[-1]
            json.loads(line)
    finally:
        http.close()


def test_a_lost_upload_and_a_lost_creation_are_found_again(sim: SimulatorThread, http: HTTPClient) -> None:
    api = apis(sim, http)["openai"]
    lines = [api.line(line_id("lost", i), "gpt-4o-mini", request(f"q{i}")) for i in range(3)]
    other = api.upload("other", lines)
    since = httpx2.get(f"{sim.url}/v1/files").json()["data"][0]["created_at"]
    upload = api.upload("lost", lines)
    size = sum(len(x) + 1 for x in lines)
    assert api.find_upload("lost", since=since, size=size) == upload != other
    assert api.find_upload("never", since=since, size=size) is None
    first = api.create("other", "gpt-4o-mini", other, lines)
    created = api.create("lost", "gpt-4o-mini", upload, lines)
    found = api.find("lost", since=created.created_at, lines=3, known=())
    assert found is not None and found.id == created.id != first.id
    assert api.find("lost", since=created.created_at, lines=3, known={created.id}) is None


def test_anthropic_finds_the_batch_it_does_not_know_by_size_and_time(sim: SimulatorThread, http: HTTPClient) -> None:
    api = apis(sim, http)["anthropic"]
    three = [api.line(line_id("a", i), "claude-x", request(f"q{i}")) for i in range(3)]
    known = api.create("a", "claude-x", None, three)
    lost = api.create("b", "claude-x", None, [api.line(line_id("b", i), "claude-x", request("z")) for i in range(3)])
    api.create("c", "claude-x", None, three[:2])
    found = api.find("b", since=known.created_at, lines=3, known={known.id})
    assert found is not None and found.id == lost.id
    assert api.find("b", since=known.created_at, lines=3, known={known.id, lost.id}) is None


@pytest.mark.parametrize("name", ["openai", "anthropic"])
def test_a_cancel_ends_the_unanswered_lines(name: str, sim: SimulatorThread, http: HTTPClient) -> None:
    httpx2.post(f"{sim.url}/_sim/config", json={"batch_processing_s": 3600.0})
    try:
        api = apis(sim, http)[name]
        model = "gpt-4o-mini" if name == "openai" else "claude-x"
        lines = [api.line(line_id("c", i), model, request(f"q{i}")) for i in range(2)]
        remote = api.create("c", model, api.upload("c", lines), lines)
        assert api.cancel(remote.id).state == "cancelling"
        ended = api.get(remote.id)
        assert ended.state == "ended"
        assert sorted(o.kind for o in api.results(ended, model)) == ["cancelled", "cancelled"]
    finally:
        httpx2.post(f"{sim.url}/_sim/config", json={"batch_processing_s": 0.0})


def test_the_batch_calls_errors_are_the_live_adapters(sim: SimulatorThread, http: HTTPClient) -> None:
    api = apis(sim, http)["openai"]
    with pytest.raises(Exception) as info:
        api.get("batch_missing")
    assert getattr(info.value, "status", None) == 404
    # the mapping is the live adapter's: a 429 is rate limited (retryable), a 401 auth
    assert isinstance(api.mapper()(429, {"retry-after": "3"}, b"{}"), RateLimitedError)
    assert isinstance(api.mapper()(401, {}, b'{"error": {"message": "bad key"}}'), AuthenticationError)
    assert sim_stats(sim)["openai_batches"] == 0

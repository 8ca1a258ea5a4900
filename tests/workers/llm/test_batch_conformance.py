"""Recorded OpenAI Batch and Anthropic Message Batches objects and JSONL (``../shared/conformance/batch``)
through our parsers, unchanged: batch objects, output and result lines, and each answer through the
live adapter that reads the same answer from a live call; what we send is the recorded shape.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.support.conformance_cases import CONFORMANCE
from tests.support.requests import chat_request
from workers.contract import Message
from workers.llm.anthropic import AnthropicProvider
from workers.llm.anthropic_batch import AnthropicBatchAPI, MessageBatch, parse_result_line
from workers.llm.anthropic_batch import outcome_of as anthropic_outcome
from workers.llm.anthropic_batch import remote_of as anthropic_remote
from workers.llm.batchapi import LineOutcome, line_id, line_index
from workers.llm.errors import BadRequestError
from workers.llm.httpclient import HTTPClient
from workers.llm.openai import OpenAIProvider
from workers.llm.openai_batch import OpenAIBatchAPI, OpenAIBatchObject, outcome_of, parse_output_line, remote_of

BATCH = CONFORMANCE / "batch"
pytestmark = pytest.mark.skipif(not BATCH.exists(), reason="conformance files not available")
KEY = "sk-llmq-batch-conformance-0123456789"


def expected(name: str) -> dict[str, Any]:
    return json.loads((BATCH / name).read_text())


def lines(path: Path) -> list[bytes]:
    return [raw for raw in path.read_bytes().splitlines() if raw.strip()]


@pytest.fixture(scope="module")
def http() -> Any:
    client = HTTPClient()
    yield client
    client.close()


@pytest.fixture()
def openai(http: HTTPClient) -> OpenAIProvider:
    return OpenAIProvider(http, api_key=KEY)


@pytest.fixture()
def anthropic(http: HTTPClient) -> AnthropicProvider:
    return AnthropicProvider(http, api_key=KEY)


def test_the_openai_batch_object() -> None:
    want = expected("openai_batch.expected.json")["openai_batch_object.json"]
    obj = OpenAIBatchObject.model_validate_json((BATCH / "openai_batch_object.json").read_bytes())
    remote = remote_of(obj)
    assert (remote.status, remote.state) == (want["status"], "ended")
    assert remote.results == (want["output_file_id"], want["error_file_id"])
    counts = want["request_counts"]
    assert (remote.total, remote.done) == (counts["total"], counts["completed"] + counts["failed"])
    assert obj.metadata == {"customer_id": "user_123456789", "batch_description": "Nightly eval job"}


@pytest.mark.parametrize("name", ["openai_batch_output_01.jsonl", "openai_batch_output_02_mixed.jsonl"])
def test_openai_output_lines(name: str, openai: OpenAIProvider, http: HTTPClient) -> None:
    want = expected("openai_batch.expected.json")[name]
    request = chat_request([Message(role="user", content="Hello world!")], max_tokens=10)
    seen: dict[str, LineOutcome] = {}
    for raw in lines(BATCH / name):
        outcome = outcome_of(parse_output_line(raw), _mapper(openai), provider="openai", model="gpt-4o-mini")
        seen[outcome.custom_id] = outcome
    assert sorted(seen) == sorted(k for k in want if not k.startswith("_"))
    for custom_id, exp in want.items():
        if custom_id.startswith("_"):
            continue
        outcome = seen[custom_id]
        err = exp["error"]
        if err is None:
            answer = OpenAIBatchAPI(openai, http).answer("gpt-4o-mini", request, outcome)
            assert outcome.kind == "succeeded"
            assert (answer.text, answer.finish_reason) == (exp["text"], exp["finish_reason"])
            assert answer.usage is not None
            assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (
                exp["usage"]["prompt_tokens"],
                exp["usage"]["completion_tokens"],
            )
        elif err["kind"] == "http_error":
            assert outcome.kind == "errored" and isinstance(outcome.error, BadRequestError)
            assert not outcome.error.retryable
            assert (outcome.error.status, outcome.error.code, outcome.error.message) == (
                err["status_code"],
                err["code"],
                err["message"],
            )
        else:
            assert outcome.kind == {"batch_expired": "expired", "batch_cancelled": "cancelled"}[err["code"]]
    totals = want["_totals"]
    assert sum(o.kind == "succeeded" for o in seen.values()) == totals["succeeded"]


def test_the_anthropic_batch_objects() -> None:
    docs = anthropic_remote(MessageBatch.model_validate_json((BATCH / "anthropic_batch_object_docs.json").read_bytes()))
    assert (docs.state, docs.status, docs.total, docs.done) == ("running", "in_progress", 200, 80)
    ended_raw = (BATCH / "anthropic_batch_object_ended.json").read_bytes()
    ended = anthropic_remote(MessageBatch.model_validate_json(ended_raw))
    assert (ended.state, ended.total, ended.done) == ("ended", 5, 3)
    assert ended.results == (json.loads(ended_raw)["results_url"],)


@pytest.mark.parametrize("name", ["anthropic_batch_results_01_docs.jsonl", "anthropic_batch_results_02_mixed.jsonl"])
def test_anthropic_result_lines_in_any_order(name: str, anthropic: AnthropicProvider, http: HTTPClient) -> None:
    want = expected("anthropic_batch.expected.json")[name]
    request = chat_request([Message(role="user", content="Hello, world")], max_tokens=1024)
    outcomes = [
        anthropic_outcome(parse_result_line(raw), model="claude-3-5-sonnet-20240620") for raw in lines(BATCH / name)
    ]
    if "_order_in_file" in want:
        assert [o.custom_id for o in outcomes] == want["_order_in_file"]
    api = AnthropicBatchAPI(anthropic, http)
    by_id = {o.custom_id: o for o in outcomes}
    for custom_id, exp in want.items():
        if custom_id.startswith("_"):
            continue
        outcome = by_id[custom_id]
        kind = {"canceled": "cancelled"}.get(exp["result_type"], exp["result_type"])
        assert outcome.kind == kind
        if kind == "succeeded":
            answer = api.answer("claude-3-5-sonnet-20240620", request, outcome)
            assert answer.native_finish_reason == exp["stop_reason"] and answer.finish_reason == "stop"
            if "text" in exp:
                assert answer.text == exp["text"]
            assert answer.usage is not None
            assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (
                exp["usage"]["input_tokens"],
                exp["usage"]["output_tokens"],
            )
        elif kind == "errored":
            assert isinstance(outcome.error, BadRequestError) and not outcome.error.retryable
            assert outcome.error.message == exp["error"]["message"]
            assert outcome.error.code == exp["error"]["type"]
    if "_counts" in want:
        counts = {k: sum(o.kind == {"canceled": "cancelled"}.get(k, k) for o in outcomes) for k in want["_counts"]}
        assert counts == want["_counts"]


def test_what_we_send_anthropic_is_the_recorded_create_request(anthropic: AnthropicProvider, http: HTTPClient) -> None:
    recorded = json.loads((BATCH / "anthropic_batch_create_request.json").read_text())
    api = AnthropicBatchAPI(anthropic, http)
    ours = []
    for entry in recorded["requests"]:
        params = entry["params"]
        request = chat_request([Message.model_validate(m) for m in params["messages"]], max_tokens=params["max_tokens"])
        ours.append(json.loads(api.line(entry["custom_id"], params["model"], request)))
    # we send a message's text as one text block (the same request as the recorded plain string)
    for entry in recorded["requests"]:
        for m in entry["params"]["messages"]:
            m["content"] = [{"type": "text", "text": m["content"]}]
    assert {"requests": ours} == recorded


def test_what_we_send_openai_has_the_recorded_line_shape(openai: OpenAIProvider, http: HTTPClient) -> None:
    recorded = [json.loads(raw) for raw in lines(BATCH / "openai_batch_input_01.jsonl")]
    api = OpenAIBatchAPI(openai, http)
    for line in recorded:
        body = line["body"]
        request = chat_request([Message.model_validate(m) for m in body["messages"]], max_tokens=body["max_tokens"])
        ours = json.loads(api.line(line["custom_id"], body["model"], request))
        assert {k: ours[k] for k in ("custom_id", "method", "url")} == {
            k: line[k] for k in ("custom_id", "method", "url")
        }
        # the official API takes max_completion_tokens where the recorded line (an older client) says max_tokens
        assert ours["body"]["messages"] == body["messages"] and ours["body"]["model"] == body["model"]
        assert ours["body"]["max_completion_tokens"] == body["max_tokens"]


def test_line_ids_name_their_batch() -> None:
    assert line_id("k7f3", 12) == "k7f3-12" and line_index("k7f3", "k7f3-12") == 12
    assert line_index("k7f3", "other-12") is None and line_index("k7f3", "k7f3-x") is None


def _mapper(provider: OpenAIProvider) -> Any:
    def mapped(status: int, headers: Any, body: bytes) -> Any:
        return provider.error_from_body(status, headers, body, model="gpt-4o-mini")

    return mapped

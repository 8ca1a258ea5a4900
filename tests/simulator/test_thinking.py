"""The simulator's Anthropic extended thinking, over HTTP: a signed thinking block first in the
answer (streamed as thinking_delta + signature_delta), and the real API's 400 for a turn of tool
results whose assistant turn lacks the block or altered it."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx2
import pytest

from simulator.app import SimulatorThread
from simulator.protocols.anthropic import signature
from simulator.structured import THINKING

HEADERS = {"anthropic-version": "2023-06-01", "x-api-key": "sk"}
TOOL = {"name": "get_capital", "input_schema": {"type": "object", "properties": {"country": {"type": "string"}}}}
THINK = {"type": "enabled", "budget_tokens": 1024}
BLOCK = {"type": "thinking", "thinking": THINKING, "signature": signature(THINKING)}
CALL = {"type": "tool_use", "id": "toolu_1", "name": "get_capital", "input": {"country": "France"}}
RESULT = {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "Paris"}]}
QUESTION = {"role": "user", "content": "Capital of France?"}


@pytest.fixture(scope="module")
def http() -> Iterator[httpx2.Client]:
    with httpx2.Client(timeout=10) as client:
        yield client


def _post(http: httpx2.Client, sim: SimulatorThread, messages: list[object], **extra: object) -> httpx2.Response:
    body = {"model": "claude-sonnet-4-5", "max_tokens": 2048, "tools": [TOOL], "messages": messages, **extra}
    return http.post(f"{sim.url}/v1/messages", headers=HEADERS, json=body)


def test_the_answer_starts_with_a_signed_thinking_block(http: httpx2.Client, simulator: SimulatorThread) -> None:
    body = _post(http, simulator, [QUESTION], thinking=THINK).json()
    assert body["content"][0] == BLOCK
    assert [b["type"] for b in body["content"]] == ["thinking", "text"]
    plain = _post(http, simulator, [QUESTION]).json()
    assert [b["type"] for b in plain["content"]] == ["text"]
    assert body["usage"]["output_tokens"] > plain["usage"]["output_tokens"]  # thinking is billed as output


def test_a_streamed_thinking_block(http: httpx2.Client, simulator: SimulatorThread) -> None:
    text = _post(http, simulator, [QUESTION], thinking=THINK, stream=True).text
    events = [json.loads(line[5:]) for line in text.splitlines() if line.startswith("data:")]
    starts = [(e["index"], e["content_block"]["type"]) for e in events if e["type"] == "content_block_start"]
    assert starts == [(0, "thinking"), (1, "text")]
    deltas = [e["delta"] for e in events if e["type"] == "content_block_delta" and e["index"] == 0]
    assert "".join(d["thinking"] for d in deltas if d["type"] == "thinking_delta") == THINKING
    assert [d["signature"] for d in deltas if d["type"] == "signature_delta"] == [signature(THINKING)]
    assert all(e["index"] == 1 for e in events if e["type"] == "content_block_delta" and "text" in e["delta"])


@pytest.mark.parametrize(
    ("assistant", "error"),
    [
        ([CALL], "messages.1.content.0.type: Expected `thinking` or `redacted_thinking`, but found `tool_use`"),
        ([{**BLOCK, "thinking": THINKING + " (edited)"}, CALL], "Invalid `signature` in `thinking` block"),
        ([{"type": "redacted_thinking", "data": ""}, CALL], "messages.1.content.0.data: Field required"),
    ],
    ids=["missing", "altered", "empty-redacted"],
)
def test_tool_results_need_the_thinking_block_back(
    http: httpx2.Client, simulator: SimulatorThread, assistant: list[object], error: str
) -> None:
    reply = _post(http, simulator, [QUESTION, {"role": "assistant", "content": assistant}, RESULT], thinking=THINK)
    assert reply.status_code == 400
    payload = reply.json()
    assert payload["error"]["type"] == "invalid_request_error" and error in payload["error"]["message"]


def test_the_block_sent_back_is_accepted_and_without_thinking_nothing_is_checked(
    http: httpx2.Client, simulator: SimulatorThread
) -> None:
    turn = [QUESTION, {"role": "assistant", "content": [BLOCK, CALL]}, RESULT]
    assert _post(http, simulator, turn, thinking=THINK).status_code == 200
    assert _post(http, simulator, [QUESTION, {"role": "assistant", "content": [CALL]}, RESULT]).status_code == 200

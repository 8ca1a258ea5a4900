"""Tool calls a provider sends without ids get ids unique across the conversation.

Gemini never sends ids, Ollama rarely, some compatible servers not always. A per-answer counter
(``call_0``) repeats in every turn of a tool loop: each provider matching results to calls by id
(Gemini's ``functionResponse`` name, Ollama's ``tool_name``) then answers the first turn's call
with the second turn's name, and Anthropic, reached by a fallback, refuses the repeated id.
"""

from __future__ import annotations

import json

from tests.support.requests import chat_request
from workers.contract import Message, ToolCall
from workers.llm import gemini, ollama
from workers.llm.base import ToolCallAccumulator
from workers.llm.openai import parse_completion


def _gemini_call(name: str) -> bytes:
    part = {"functionCall": {"name": name, "args": {"city": "Paris"}}}
    return json.dumps(
        {"candidates": [{"content": {"parts": [part], "role": "model"}, "finishReason": "STOP"}]}
    ).encode()


def _ollama_call(name: str) -> bytes:
    message = {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": name, "arguments": {}}}]}
    return json.dumps({"model": "m", "message": message, "done": True, "done_reason": "stop"}).encode()


def _loop(first: ToolCall, second: ToolCall) -> list[Message]:
    """A tool loop two turns deep: each turn's call answered by its own result."""
    return [
        Message(role="user", content="weather, then the time"),
        Message(role="assistant", content=None, tool_calls=[first]),
        Message(role="tool", tool_call_id=first.id, content="18C"),
        Message(role="assistant", content=None, tool_calls=[second]),
        Message(role="tool", tool_call_id=second.id, content="noon"),
    ]


def test_gemini_calls_of_two_turns_get_distinct_ids_and_each_result_names_its_own_call() -> None:
    first = gemini.parse_response(_gemini_call("get_weather")).tool_calls[0]
    second = gemini.parse_response(_gemini_call("get_time")).tool_calls[0]
    assert first.id != second.id
    body = gemini.build_body(chat_request(_loop(first, second)))
    responses = [
        p["functionResponse"]["name"]
        for c in body["contents"]  # type: ignore[attr-defined]
        for p in c["parts"]
        if "functionResponse" in p
    ]
    assert responses == ["get_weather", "get_time"]


def test_ollama_calls_of_two_turns_get_distinct_ids_and_each_result_names_its_own_call() -> None:
    first = ollama.parse_chat_response(_ollama_call("get_weather")).tool_calls[0]
    second = ollama.parse_chat_response(_ollama_call("get_time")).tool_calls[0]
    assert first.id != second.id
    body = ollama.build_body("m", chat_request(_loop(first, second)), stream=False)
    assert [m.get("tool_name") for m in body["messages"] if m["role"] == "tool"] == ["get_weather", "get_time"]  # type: ignore[attr-defined]


def test_compatible_servers_and_streamed_fragments_without_ids_get_distinct_ids() -> None:
    answer = {"choices": [{"message": {"tool_calls": [{"type": "function", "function": {"name": "f"}}]}}]}
    ids = {parse_completion(json.dumps(answer).encode()).tool_calls[0].id for _ in range(2)}
    streamed = set()
    for _ in range(2):
        acc = ToolCallAccumulator()
        acc.start(0, None, "f")
        streamed.add(acc.build()[0].id)
    assert len(ids) == 2 and len(streamed) == 2
    assert all(i.startswith("call_") for i in ids | streamed)

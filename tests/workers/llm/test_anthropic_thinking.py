"""Anthropic extended thinking: thinking blocks (with their signature) and redacted thinking are
parsed from a response, streamed or not, and sent back first and unchanged in the assistant turn
of the next request; other providers never see them. Served and captured over real HTTP."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from tests.support.replay_server import ReplayServer, Reply
from workers.contract import CompletionJob, CompletionResult, Message, ReasoningBlock, Tool, ToolFunction
from workers.llm.anthropic import AnthropicProvider
from workers.llm.base import ChatRequest, Completion
from workers.llm.errors import IncompleteStreamError
from workers.llm.httpclient import HTTPClient
from workers.llm.ollama import OllamaProvider
from workers.llm.openai import OpenAIProvider

THOUGHT = ["I need the weather in Paris.", " Call the tool first."]
SIGNATURE = "EqQBCgIYAhIM1gbcDa9GJwZA2b3hGgxBdjrkzLoky3dl1pkiMOYds/+fqYXnmSAbbN8Xp+1Q=="
REDACTED = "EmwKAhgBEgy3va3pzix/LafPsn4aDFIT2Xlxh0L5L8rLVyIwxtE3rAFBa8cr3qpPkNRj2YfWXGmKDxH4mPnZ5sQ7vB9URj2pLmN3kF8="
SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
WEATHER = Tool(function=ToolFunction(name="get_weather", parameters=SCHEMA))
EXPECTED_BLOCKS = [
    ReasoningBlock(type="thinking", thinking="".join(THOUGHT), signature=SIGNATURE),
    ReasoningBlock(type="redacted_thinking", data=REDACTED),
]
OK = b'{"id":"msg_2","model":"m","content":[{"type":"text","text":"ok"}],"stop_reason":"end_turn","usage":{"input_tokens":3,"output_tokens":1}}'


def _sse(event: str, payload: object) -> bytes:
    return f"event: {event}\ndata: ".encode() + json.dumps(payload).encode() + b"\n\n"


def _block_start(index: int, block: dict[str, object]) -> bytes:
    return _sse("content_block_start", {"type": "content_block_start", "index": index, "content_block": block})


def _delta(index: int, delta: dict[str, object]) -> bytes:
    return _sse("content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta})


def _stop(index: int) -> bytes:
    return _sse("content_block_stop", {"type": "content_block_stop", "index": index})


#: The documented event sequence of a streamed answer with thinking, redacted thinking, text and a tool call.
STREAM = b"".join(
    [
        _sse(
            "message_start",
            {
                "type": "message_start",
                "message": {
                    "id": "msg_1",
                    "type": "message",
                    "role": "assistant",
                    "content": [],
                    "model": "claude-sonnet-4-5",
                    "stop_reason": None,
                    "usage": {"input_tokens": 40, "output_tokens": 2},
                },
            },
        ),
        _block_start(0, {"type": "thinking", "thinking": "", "signature": ""}),
        *(_delta(0, {"type": "thinking_delta", "thinking": t}) for t in THOUGHT),
        _delta(0, {"type": "signature_delta", "signature": SIGNATURE}),
        _stop(0),
        _block_start(1, {"type": "redacted_thinking", "data": REDACTED}),
        _stop(1),
        _block_start(2, {"type": "text", "text": ""}),
        _delta(2, {"type": "text_delta", "text": "Checking."}),
        _stop(2),
        _block_start(3, {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}}),
        _delta(3, {"type": "input_json_delta", "partial_json": ""}),
        _delta(3, {"type": "input_json_delta", "partial_json": '{"city": "Paris"}'}),
        _stop(3),
        _sse(
            "message_delta",
            {"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 60}},
        ),
        _sse("message_stop", {"type": "message_stop"}),
    ]
)
BODY = json.dumps(
    {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-5",
        "content": [
            {"type": "thinking", "thinking": "".join(THOUGHT), "signature": SIGNATURE},
            {"type": "redacted_thinking", "data": REDACTED},
            {"type": "text", "text": "Checking."},
            {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
        ],
        "stop_reason": "tool_use",
        "usage": {"input_tokens": 40, "output_tokens": 60},
    }
).encode()


_counter = iter(range(1_000_000))


def _request(messages: list[Message], *, thinking: bool = True) -> ChatRequest:
    job = CompletionJob(
        model="anthropic:claude-sonnet-4-5",
        messages=messages,
        tools=[WEATHER],
        max_tokens=4096,
        reasoning={"budget_tokens": 2048} if thinking else None,
    )
    return ChatRequest(messages=list(job.messages or []), params=job, tools=job.client_tools)


MODEL = "claude-sonnet-4-5"


QUESTION = Message(role="user", content="Weather in Paris?")


def _answer(server: ReplayServer, http: HTTPClient, *, stream: bool) -> Completion:
    key = f"answer-{next(_counter)}"
    content_type = "text/event-stream" if stream else "application/json"
    base = server.add(key, Reply(200, [("Content-Type", content_type)], STREAM if stream else BODY))
    provider = AnthropicProvider(http, api_key="sk", base_url=base)
    if not stream:
        return provider.complete(MODEL, _request([QUESTION]))
    with provider.stream(MODEL, _request([QUESTION])) as s:
        assert list(s) == ["Checking."]
        return s.to_completion()


def _follow_up(completion: Completion) -> list[Message]:
    assistant = Message(
        role="assistant",
        content=completion.text,
        tool_calls=completion.tool_calls,
        reasoning_blocks=completion.reasoning_blocks,
    )
    # through the wire and back, as the tool loop's journal and a client's follow-up job carry it
    assistant = Message.model_validate_json(assistant.model_dump_json())
    result = Message(role="tool", tool_call_id=completion.tool_calls[0].id, content="18 C, sunny")
    return [QUESTION, assistant, result]


def _sent(server: ReplayServer, http: HTTPClient, kind: str, messages: list[Message]) -> Any:
    key = f"{kind}-{next(_counter)}"
    if kind == "anthropic":
        base = server.add(key, Reply(200, [("Content-Type", "application/json")], OK))
        AnthropicProvider(http, api_key="sk", base_url=base).complete(MODEL, _request(messages))
    elif kind == "openai":
        reply = b'{"id":"c","model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"ok"},"finish_reason":"stop"}]}'
        base = server.add(key, Reply(200, [("Content-Type", "application/json")], reply))
        OpenAIProvider(http, api_key="sk", base_url=f"{base}/v1").complete("m", _request(messages, thinking=False))
    else:
        reply = b'{"model":"m","message":{"role":"assistant","content":"ok"},"done":true,"done_reason":"stop"}'
        base = server.add(key, Reply(200, [("Content-Type", "application/json")], reply))
        OllamaProvider(http, host=base).complete("m", _request(messages, thinking=False))
    (captured,) = server.requests[key]
    return json.loads(captured.body)


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "body"])
def test_thinking_blocks_are_parsed_with_their_signature(stream: bool, server: ReplayServer, http: HTTPClient) -> None:
    completion = _answer(server, http, stream=stream)
    assert completion.reasoning_blocks == EXPECTED_BLOCKS
    assert completion.thinking == "".join(THOUGHT)
    assert completion.text == "Checking."
    assert [(c.id, c.function.name, json.loads(c.function.arguments)) for c in completion.tool_calls] == [
        ("toolu_1", "get_weather", {"city": "Paris"})
    ]
    assert completion.finish_reason == "tool_calls"
    assert completion.usage is not None and completion.usage.completion_tokens == 60


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "body"])
def test_the_next_turn_sends_them_back_first_and_unchanged(
    stream: bool, server: ReplayServer, http: HTTPClient
) -> None:
    messages = _follow_up(_answer(server, http, stream=stream))
    body = _sent(server, http, "anthropic", messages)
    assert body["thinking"] == {"type": "enabled", "budget_tokens": 2048}
    assistant, results = body["messages"][1], body["messages"][2]
    assert assistant == {
        "role": "assistant",
        "content": [
            {"type": "thinking", "thinking": "".join(THOUGHT), "signature": SIGNATURE},
            {"type": "redacted_thinking", "data": REDACTED},
            {"type": "text", "text": "Checking."},
            {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
        ],
    }
    assert results == {
        "role": "user",
        "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "18 C, sunny"}],
    }


@pytest.mark.parametrize("kind", ["openai", "ollama"])
def test_other_providers_never_see_them(kind: str, server: ReplayServer, http: HTTPClient) -> None:
    messages = _follow_up(_answer(server, http, stream=False))
    body = _sent(server, http, kind, messages)
    raw = json.dumps(body)
    assert "reasoning_blocks" not in raw and SIGNATURE not in raw and REDACTED not in raw
    assert [m["role"] for m in body["messages"]] == ["user", "assistant", "tool"]


def test_the_contract_field() -> None:
    with pytest.raises(ValidationError, match="only allowed on 'assistant'"):
        Message(role="user", content="x", reasoning_blocks=EXPECTED_BLOCKS)
    with pytest.raises(ValidationError, match="needs 'thinking' and 'signature'"):
        ReasoningBlock(type="thinking", thinking="x")
    with pytest.raises(ValidationError, match="needs 'data'"):
        ReasoningBlock(type="redacted_thinking", thinking="x")
    # a client's follow-up job answering tool calls carries the blocks of the result it continues
    result = CompletionResult(id="j", status="succeeded", reasoning_blocks=EXPECTED_BLOCKS)
    result = CompletionResult.model_validate_json(result.model_dump_json())
    job = CompletionJob.model_validate_json(
        CompletionJob(
            model="anthropic:claude-sonnet-4-5",
            messages=[
                QUESTION,
                Message(
                    role="assistant",
                    tool_calls=[{"id": "toolu_1", "function": {"name": "get_weather", "arguments": "{}"}}],
                    reasoning_blocks=result.reasoning_blocks,
                ),
                Message(role="tool", tool_call_id="toolu_1", content="18 C"),
            ],
            tools=[WEATHER],
        ).model_dump_json()
    )
    assert job.messages is not None and job.messages[1].reasoning_blocks == EXPECTED_BLOCKS


def test_a_streamed_thinking_block_without_its_signature_is_an_incomplete_stream(
    server: ReplayServer, http: HTTPClient
) -> None:
    unsigned = STREAM.replace(_delta(0, {"type": "signature_delta", "signature": SIGNATURE}), b"")
    base = server.add(f"unsigned-{next(_counter)}", Reply(200, [("Content-Type", "text/event-stream")], unsigned))
    stream = AnthropicProvider(http, api_key="sk", base_url=base).stream(MODEL, _request([QUESTION]))
    with stream, pytest.raises(IncompleteStreamError, match="signature"):
        list(stream)

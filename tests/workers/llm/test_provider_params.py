"""Each request parameter in each provider's own shape, read off real requests over HTTP.

``response_format``, ``tool_choice``, ``parallel_tool_calls``, ``stop``, ``top_p``, ``seed``, ``user``,
``reasoning`` and image parts, translated by ``workers/llm/{openai,anthropic,ollama}.py`` as each
provider documents them; and the answers that come back (forced-tool structured output, refusal,
reasoning tokens) parsed into our completion.
"""

from __future__ import annotations

import base64
import json
import struct
from typing import Any

import pytest

from tests.support.replay_server import ReplayServer, Reply
from workers.contract import CompletionJob, Message, Tool, ToolFunction
from workers.llm.anthropic import STRUCTURED_TOOL, AnthropicProvider
from workers.llm.base import ChatRequest, Provider
from workers.llm.httpclient import HTTPClient
from workers.llm.ollama import OllamaProvider
from workers.llm.openai import OpenAIProvider

JSON = [("Content-Type", "application/json")]
OPENAI_OK = b'{"id":"c1","model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"ok"},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":1}}'
ANTHROPIC_OK = b'{"id":"msg_1","model":"m","content":[{"type":"text","text":"ok"}],"stop_reason":"end_turn","usage":{"input_tokens":3,"output_tokens":1}}'
OLLAMA_OK = b'{"model":"m","message":{"role":"assistant","content":"ok"},"done":true,"done_reason":"stop","prompt_eval_count":3,"eval_count":1}'

SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
FORMAT = {"type": "json_schema", "json_schema": {"name": "place", "schema": SCHEMA, "strict": True}}
WEATHER = Tool(function=ToolFunction(name="get_weather", parameters=SCHEMA))


def png(width: int, height: int) -> str:
    raw = b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + struct.pack(">II", width, height) + b"\x08\x02\0\0\0"
    return "data:image/png;base64," + base64.b64encode(raw + b"\0" * 16).decode()


IMAGE = png(64, 32)
PICTURE = Message(
    role="user",
    content=[
        {"type": "text", "text": "What is in these?"},
        {"type": "image_url", "image_url": {"url": IMAGE, "detail": "low"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
    ],
)


def _request(model: str, **job: Any) -> tuple[str, ChatRequest]:
    """The model and the ChatRequest the worker builds for a job: the job is the request's parameters."""
    fields = {"model": f"x:{model}", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4096} | job
    j = CompletionJob(**fields)
    return model, ChatRequest(messages=list(j.messages or []), params=j, tools=j.client_tools)


_counter = iter(range(1_000_000))


def _sent(
    server: ReplayServer, http: HTTPClient, kind: str, request: tuple[str, ChatRequest], reply: bytes = b""
) -> Any:
    key = f"{kind}-{next(_counter)}"
    base = server.add(
        key, Reply(200, JSON, reply or {"openai": OPENAI_OK, "anthropic": ANTHROPIC_OK}.get(kind, OLLAMA_OK))
    )
    provider: Provider
    if kind == "openai":
        provider = OpenAIProvider(http, api_key="sk", base_url=f"{base}/v1")
    elif kind == "anthropic":
        provider = AnthropicProvider(http, api_key="sk", base_url=base)
    else:
        provider = OllamaProvider(http, host=base)
    completion = provider.complete(*request)
    (captured,) = server.requests[key]
    return json.loads(captured.body), completion


# --- OpenAI: the contract's shapes are OpenAI's -----------------------------------------------------


def test_openai_every_field(server: ReplayServer, http: HTTPClient) -> None:
    request = _request(
        "gpt-4o",
        tools=[WEATHER],
        response_format=FORMAT,
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        parallel_tool_calls=False,
        stop=["END", "STOP"],
        top_p=0.9,
        seed=7,
        user="user-42",
        reasoning={"effort": "low"},
    )
    body, _ = _sent(server, http, "openai", request)
    assert body["response_format"] == FORMAT
    assert body["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert body["parallel_tool_calls"] is False
    assert body["stop"] == ["END", "STOP"]
    assert (body["top_p"], body["seed"], body["user"]) == (0.9, 7, "user-42")
    assert body["reasoning_effort"] == "low"


def test_openai_sends_nothing_it_was_not_asked_for(server: ReplayServer, http: HTTPClient) -> None:
    body, _ = _sent(server, http, "openai", _request("gpt-4o"))
    assert set(body) == {"model", "messages", "max_tokens"}


@pytest.mark.parametrize("choice", ["auto", "none", "required"])
def test_openai_tool_choice_strings(server: ReplayServer, http: HTTPClient, choice: str) -> None:
    body, _ = _sent(server, http, "openai", _request("gpt-4o", tools=[WEATHER], tool_choice=choice))
    assert body["tool_choice"] == choice


def test_openai_json_object_and_images(server: ReplayServer, http: HTTPClient) -> None:
    request = _request("gpt-4o", messages=[PICTURE], response_format={"type": "json_object"})
    body, _ = _sent(server, http, "openai", request)
    assert body["response_format"] == {"type": "json_object"}
    assert body["messages"][0]["content"] == [
        {"type": "text", "text": "What is in these?"},
        {"type": "image_url", "image_url": {"url": IMAGE, "detail": "low"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png", "detail": "auto"}},
    ]


def test_openai_refusal_and_reasoning_tokens_come_back(server: ReplayServer, http: HTTPClient) -> None:
    reply = json.dumps(
        {
            "id": "c",
            "model": "o4-mini",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": None, "refusal": "No."},
                    "finish_reason": "stop",
                }
            ],
            "usage": {
                "prompt_tokens": 5,
                "completion_tokens": 50,
                "completion_tokens_details": {"reasoning_tokens": 40},
            },
        }
    ).encode()
    _, completion = _sent(server, http, "openai", _request("o4-mini", reasoning={"effort": "high"}), reply)
    assert completion.refusal == "No." and completion.text == ""
    assert completion.usage is not None and completion.usage.reasoning_tokens == 40


# --- Anthropic -----------------------------------------------------------------------------------------


def test_anthropic_every_field(server: ReplayServer, http: HTTPClient) -> None:
    request = _request(
        "claude-3-5-haiku-20241022",
        tools=[WEATHER],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        parallel_tool_calls=False,
        stop=["END"],
        top_p=0.9,
        user="user-42",
    )
    body, _ = _sent(server, http, "anthropic", request)
    assert body["tool_choice"] == {"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True}
    assert body["stop_sequences"] == ["END"]
    assert body["top_p"] == 0.9
    assert body["metadata"] == {"user_id": "user-42"}
    assert "seed" not in body and "user" not in body


@pytest.mark.parametrize(
    ("choice", "wire"), [("auto", {"type": "auto"}), ("required", {"type": "any"}), ("none", {"type": "none"})]
)
def test_anthropic_tool_choice(server: ReplayServer, http: HTTPClient, choice: str, wire: dict[str, str]) -> None:
    body, _ = _sent(server, http, "anthropic", _request("claude-sonnet-4-5", tools=[WEATHER], tool_choice=choice))
    assert body["tool_choice"] == wire


def test_anthropic_native_structured_output(server: ReplayServer, http: HTTPClient) -> None:
    body, _ = _sent(server, http, "anthropic", _request("claude-sonnet-4-5", response_format=FORMAT))
    assert body["output_config"] == {"format": {"type": "json_schema", "schema": SCHEMA}}
    assert "tools" not in body and "tool_choice" not in body


def test_anthropic_forced_tool_structured_output(server: ReplayServer, http: HTTPClient) -> None:
    reply = json.dumps(
        {
            "id": "msg",
            "model": "claude-3-5-haiku-20241022",
            "content": [{"type": "tool_use", "id": "toolu_1", "name": STRUCTURED_TOOL, "input": {"city": "Paris"}}],
            "stop_reason": "tool_use",
            "usage": {"input_tokens": 3, "output_tokens": 9},
        }
    ).encode()
    request = _request("claude-3-5-haiku-20241022", tools=[WEATHER], response_format=FORMAT)
    body, completion = _sent(server, http, "anthropic", request, reply)
    assert "output_config" not in body
    assert body["tools"][-1]["name"] == STRUCTURED_TOOL and body["tools"][-1]["input_schema"] == SCHEMA
    assert body["tools"][0]["name"] == "get_weather"  # the job's own tools stay
    assert body["tool_choice"] == {"type": "tool", "name": STRUCTURED_TOOL}
    # the forced tool's input is the answer, not a tool call
    assert json.loads(completion.text) == {"city": "Paris"} and completion.tool_calls == []
    assert completion.finish_reason == "stop"


def test_anthropic_json_object_goes_through_a_forced_tool(server: ReplayServer, http: HTTPClient) -> None:
    body, _ = _sent(server, http, "anthropic", _request("claude-sonnet-4-5", response_format={"type": "json_object"}))
    assert body["tools"] == [
        {"name": STRUCTURED_TOOL, "description": body["tools"][0]["description"], "input_schema": {"type": "object"}}
    ]


@pytest.mark.parametrize(("reasoning", "budget"), [({"budget_tokens": 2048}, 2048), ({"effort": "medium"}, 4096)])
def test_anthropic_extended_thinking(
    server: ReplayServer, http: HTTPClient, reasoning: dict[str, Any], budget: int
) -> None:
    body, _ = _sent(server, http, "anthropic", _request("claude-sonnet-4-5", reasoning=reasoning, max_tokens=8192))
    assert body["thinking"] == {"type": "enabled", "budget_tokens": budget}
    assert body["max_tokens"] == 8192


def test_anthropic_images(server: ReplayServer, http: HTTPClient) -> None:
    body, _ = _sent(server, http, "anthropic", _request("claude-sonnet-4-5", messages=[PICTURE]))
    assert body["messages"][0]["content"] == [
        {"type": "text", "text": "What is in these?"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": IMAGE.split(",", 1)[1]}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.png"}},
    ]


def test_anthropic_refusal_is_not_content(server: ReplayServer, http: HTTPClient) -> None:
    reply = b'{"id":"m","model":"m","content":[{"type":"text","text":"I cannot."}],"stop_reason":"refusal","usage":{"input_tokens":3,"output_tokens":2}}'
    _, completion = _sent(server, http, "anthropic", _request("claude-sonnet-4-5"), reply)
    assert completion.refusal == "I cannot." and completion.text == ""


# --- Ollama --------------------------------------------------------------------------------------------


def test_ollama_every_field(server: ReplayServer, http: HTTPClient) -> None:
    picture = Message(
        role="user", content=[{"type": "text", "text": "What?"}, {"type": "image_url", "image_url": {"url": IMAGE}}]
    )
    request = _request(
        "llama3.1",
        messages=[picture],
        response_format=FORMAT,
        stop=["END"],
        top_p=0.5,
        seed=3,
        reasoning={"effort": "high"},
    )
    body, _ = _sent(server, http, "ollama", request)
    assert body["format"] == SCHEMA
    assert body["options"] == {"num_predict": 4096, "stop": ["END"], "top_p": 0.5, "seed": 3}
    assert body["think"] == "high"
    assert body["messages"][0] == {"role": "user", "content": "What?", "images": [IMAGE.split(",", 1)[1]]}


def test_ollama_json_mode_and_tool_choice_none(server: ReplayServer, http: HTTPClient) -> None:
    request = _request("llama3.1", tools=[WEATHER], tool_choice="none", response_format={"type": "json_object"})
    body, _ = _sent(server, http, "ollama", request)
    assert body["format"] == "json"
    assert "tools" not in body  # 'none': the model is not offered the tools

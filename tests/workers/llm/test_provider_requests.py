"""What each provider sends: our contract translated to its wire format, read off real requests."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.support.replay_server import ReplayServer, Reply
from tests.support.requests import chat_request
from workers.contract import FunctionCall, Message, RequestParams, Tool, ToolCall, ToolFunction
from workers.llm.anthropic import AnthropicProvider
from workers.llm.base import ChatRequest, Provider
from workers.llm.errors import BadRequestError, ConfigurationError
from workers.llm.httpclient import HTTPClient
from workers.llm.ollama import OllamaProvider, parse_host
from workers.llm.openai import OpenAIProvider
from workers.llm.registry import build_registry

JSON = [("Content-Type", "application/json")]
OPENAI_OK = b'{"id":"c1","model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"ok"},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":1}}'
ANTHROPIC_OK = b'{"id":"msg_1","model":"m","content":[{"type":"text","text":"ok"}],"stop_reason":"end_turn","usage":{"input_tokens":3,"output_tokens":1}}'
OLLAMA_OK = b'{"model":"m","message":{"role":"assistant","content":"ok"},"done":true,"done_reason":"stop","prompt_eval_count":3,"eval_count":1}'

WEATHER = Tool(
    function=ToolFunction(
        name="get_weather",
        description="Weather for a city",
        parameters={"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    )
)
CONVERSATION = [
    Message(role="system", content="Be brief."),
    Message(role="user", content="Weather in Paris and Rome?"),
    Message(
        role="assistant",
        content="Checking.",
        tool_calls=[
            ToolCall(id="call_1", function=FunctionCall(name="get_weather", arguments='{"city": "Paris"}')),
            ToolCall(id="call_2", function=FunctionCall(name="get_weather", arguments='{"city": "Rome"}')),
        ],
    ),
    Message(role="tool", tool_call_id="call_1", content="18C"),
    Message(role="tool", tool_call_id="call_2", content="24C"),
    Message(role="user", content="Thanks, and in F?"),
]


def sent(
    server: ReplayServer, key: str, provider: Provider, request: ChatRequest, *, model: str = "m"
) -> tuple[dict[str, str], Any]:
    provider.complete(model, request)
    (captured,) = server.requests[key]
    return captured.headers, json.loads(captured.body)


def request(messages: list[Message] = CONVERSATION, **overrides: Any) -> ChatRequest:
    fields: dict[str, Any] = {"max_tokens": 100, "tools": [WEATHER]}
    return chat_request(messages, **(fields | overrides))


def test_openai_request(server: ReplayServer, http: HTTPClient) -> None:
    base = server.add("oa-req", Reply(200, JSON, OPENAI_OK))
    provider = OpenAIProvider(http, api_key="sk-a", base_url=f"{base}/v1", organization="org-1", project="proj-1")
    headers, body = sent(server, "oa-req", provider, request(temperature=1.5, headers={"x-llmq-job-id": "job-1"}))
    assert headers["authorization"] == "Bearer sk-a"
    assert (headers["openai-organization"], headers["openai-project"]) == ("org-1", "proj-1")
    assert headers["x-llmq-job-id"] == "job-1"
    assert body["max_tokens"] == 100 and "max_completion_tokens" not in body  # a compatible server
    assert body["temperature"] == 1.5
    assert body["messages"][2] == {
        "role": "assistant",
        "content": "Checking.",
        "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
            {"id": "call_2", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'}},
        ],
    }
    assert body["messages"][3] == {"role": "tool", "content": "18C", "tool_call_id": "call_1"}
    assert body["tools"] == [WEATHER.model_dump(exclude_none=True)]
    assert "stream" not in body


def test_openai_official_api_gets_max_completion_tokens(http: HTTPClient) -> None:
    provider = OpenAIProvider(http, api_key="sk-a")
    body = provider.build_body("m", request(), stream=True)
    assert body["max_completion_tokens"] == 100 and "max_tokens" not in body
    assert body["stream_options"] == {"include_usage": True}


def test_anthropic_request(server: ReplayServer, http: HTTPClient) -> None:
    base = server.add("an-req", Reply(200, JSON, ANTHROPIC_OK))
    provider = AnthropicProvider(http, api_key="sk-ant-a", base_url=base)
    headers, body = sent(server, "an-req", provider, request(temperature=1.5))
    assert headers["x-api-key"] == "sk-ant-a" and "authorization" not in headers
    assert headers["anthropic-version"] == "2023-06-01"
    assert body["system"] == "Be brief."
    assert body["max_tokens"] == 100
    assert body["temperature"] == 1.0  # capped at Anthropic's maximum
    assert body["tools"] == [
        {
            "name": "get_weather",
            "description": "Weather for a city",
            "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        }
    ]
    assert body["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "Weather in Paris and Rome?"}]},
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Checking."},
                {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}},
                {"type": "tool_use", "id": "call_2", "name": "get_weather", "input": {"city": "Rome"}},
            ],
        },
        {  # both results and the next question in one user turn, results first
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "call_1", "content": "18C"},
                {"type": "tool_result", "tool_use_id": "call_2", "content": "24C"},
                {"type": "text", "text": "Thanks, and in F?"},
            ],
        },
    ]


def test_anthropic_without_system_or_temperature(server: ReplayServer, http: HTTPClient) -> None:
    base = server.add("an-min", Reply(200, JSON, ANTHROPIC_OK))
    provider = AnthropicProvider(http, api_key="k", base_url=base)
    _, body = sent(
        server,
        "an-min",
        provider,
        ChatRequest(messages=[Message(role="user", content="hi")], params=RequestParams(max_tokens=5)),
    )
    assert body == {
        "model": "m",
        "max_tokens": 5,
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
    }


@pytest.mark.parametrize("provider_cls", [AnthropicProvider, OllamaProvider])
def test_tool_arguments_must_be_a_json_object(provider_cls: type[Provider], http: HTTPClient) -> None:
    bad = Message(
        role="assistant", tool_calls=[ToolCall(id="c", function=FunctionCall(name="f", arguments="not json"))]
    )
    provider = provider_cls(http, api_key="k")  # type: ignore[call-arg]
    with pytest.raises(BadRequestError, match="not a JSON object"):
        provider.complete(
            "m", ChatRequest(messages=[Message(role="user", content="hi"), bad], params=RequestParams(max_tokens=5))
        )


def test_ollama_request(server: ReplayServer, http: HTTPClient) -> None:
    base = server.add("ol-req", Reply(200, JSON, OLLAMA_OK))
    provider = OllamaProvider(http, host=base)
    headers, body = sent(server, "ol-req", provider, request(temperature=0.2))
    assert "authorization" not in headers
    assert body["stream"] is False  # Ollama streams unless told not to
    assert body["options"] == {"num_predict": 100, "temperature": 0.2}
    assert body["messages"][0] == {"role": "system", "content": "Be brief."}
    assert body["messages"][2] == {
        "role": "assistant",
        "content": "Checking.",
        "tool_calls": [
            {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}},
            {"function": {"name": "get_weather", "arguments": {"city": "Rome"}}},
        ],
    }
    assert body["messages"][3] == {"role": "tool", "content": "18C", "tool_name": "get_weather"}
    assert body["tools"] == [WEATHER.model_dump(exclude_none=True)]


@pytest.mark.parametrize(
    ("host", "url"),
    [
        (None, "http://127.0.0.1:11434"),
        ("", "http://127.0.0.1:11434"),
        ("1.2.3.4", "http://1.2.3.4:11434"),
        (":56789", "http://127.0.0.1:56789"),
        ("example.com:56789/path/", "http://example.com:56789/path"),
        ("http://example.com", "http://example.com:80"),
        ("https://example.com", "https://example.com:443"),
        ("[::1]:8080", "http://[::1]:8080"),
    ],
)
def test_ollama_host_like_the_official_client(host: str | None, url: str) -> None:
    assert parse_host(host) == url


def test_keys_and_urls_come_from_the_worker_environment(server: ReplayServer, http: HTTPClient) -> None:
    env = {
        "OPENAI_API_KEY": "sk-env-openai",
        "OPENAI_BASE_URL": server.add("env-oa", Reply(200, JSON, OPENAI_OK)) + "/v1",
        "ANTHROPIC_API_KEY": "sk-env-anthropic",
        "ANTHROPIC_BASE_URL": server.add("env-an", Reply(200, JSON, ANTHROPIC_OK)),
        "OLLAMA_HOST": server.add("env-ol", Reply(200, JSON, OLLAMA_OK)),
        "OLLAMA_API_KEY": "ol-env",
    }
    registry = build_registry(http, env)
    assert registry.names() == ["anthropic", "ollama", "openai"]
    auth = {"openai": ("authorization", "Bearer sk-env-openai"), "anthropic": ("x-api-key", "sk-env-anthropic")}
    auth["ollama"] = ("authorization", "Bearer ol-env")
    for name, key in [("openai", "env-oa"), ("anthropic", "env-an"), ("ollama", "env-ol")]:
        completion = registry.get(name).complete(
            "m", ChatRequest(messages=[Message(role="user", content="hi")], params=RequestParams(max_tokens=5))
        )
        assert completion.text == "ok" and completion.finish_reason == "stop"
        header, value = auth[name]
        assert server.requests[key][0].headers[header] == value


@pytest.mark.parametrize("provider_cls", [OpenAIProvider, AnthropicProvider])
def test_a_missing_key_for_the_official_api_is_a_configuration_error(
    provider_cls: type[Provider], http: HTTPClient
) -> None:
    provider = provider_cls.from_env(http, {})  # type: ignore[attr-defined]
    with pytest.raises(ConfigurationError, match="API_KEY is not set"):
        provider.stream(
            "m", ChatRequest(messages=[Message(role="user", content="hi")], params=RequestParams(max_tokens=5))
        )

"""What Azure, Gemini, Bedrock and OpenAI-compatible providers send, read off real requests."""

from __future__ import annotations

import json
from typing import Any

from tests.support.replay_server import ReplayServer, Reply
from tests.workers.llm.test_provider_requests import CONVERSATION, JSON, OPENAI_OK, WEATHER, request, sent
from workers.contract import JsonSchemaFormat, NamedToolChoice, Reasoning, ReasoningBlock
from workers.contract.params import ToolChoiceFunction
from workers.llm.aws import load_aws
from workers.llm.azure import AzureOpenAIProvider
from workers.llm.bedrock import BedrockProvider
from workers.llm.gemini import GeminiProvider
from workers.llm.httpclient import HTTPClient
from workers.llm.openai import OpenAIProvider

GEMINI_OK = b'{"candidates":[{"content":{"parts":[{"text":"ok"}],"role":"model"},"finishReason":"STOP"}],"usageMetadata":{"promptTokenCount":3,"candidatesTokenCount":1}}'
BEDROCK_OK = b'{"output":{"message":{"role":"assistant","content":[{"text":"ok"}]}},"stopReason":"end_turn","usage":{"inputTokens":3,"outputTokens":1}}'
SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": ["string", "null"]}, "kind": {"const": "weather"}},
    "required": ["city"],
    "additionalProperties": False,
    "$schema": "https://json-schema.org/draft/2020-12/schema",
}


def _format() -> JsonSchemaFormat:
    return JsonSchemaFormat.model_validate({"type": "json_schema", "json_schema": {"name": "w", "schema": SCHEMA}})


def test_azure_deployment_and_v1_urls_and_the_api_key_header(server: ReplayServer, http: HTTPClient) -> None:
    base = server.add("az-req", Reply(200, JSON, OPENAI_OK))
    dated = AzureOpenAIProvider(http, api_key="az-key", base_url=base, api_version="2024-10-21")
    headers, body = sent(server, "az-req", dated, request(), model="my gpt4o")
    assert server.requests["az-req"][0].path == "/openai/deployments/my%20gpt4o/chat/completions?api-version=2024-10-21"
    assert headers["api-key"] == "az-key" and "authorization" not in headers
    assert body["max_completion_tokens"] == 100
    base = server.add("az-v1", Reply(200, JSON, OPENAI_OK))
    v1 = AzureOpenAIProvider(http, api_key="entra-token", base_url=base + "/openai/v1", bearer=True)
    headers, body = sent(server, "az-v1", v1, request(), model="gpt-4o")
    assert server.requests["az-v1"][0].path == "/openai/v1/chat/completions"
    assert headers["authorization"] == "Bearer entra-token" and body["model"] == "gpt-4o"
    old = AzureOpenAIProvider(http, api_key="k", base_url=base, api_version="2023-05-15")
    assert old.build_body("m", request(), stream=False)["max_tokens"] == 100  # before max_completion_tokens existed


def test_a_compatible_server_gets_max_tokens_and_its_extra_headers(server: ReplayServer, http: HTTPClient) -> None:
    base = server.add("compat", Reply(200, JSON, OPENAI_OK))
    groq = OpenAIProvider(http, api_key="gsk", base_url=f"{base}/v1", name="groq", headers={"x-team": "search"})
    headers, body = sent(server, "compat", groq, request())
    assert headers["x-team"] == "search" and headers["authorization"] == "Bearer gsk"
    assert body["max_tokens"] == 100 and "max_completion_tokens" not in body


def test_gemini_request(server: ReplayServer, http: HTTPClient) -> None:
    base = server.add("gm-req", Reply(200, JSON, GEMINI_OK))
    provider = GeminiProvider(http, api_key="gm-key", base_url=f"{base}/v1beta")
    signed = CONVERSATION[2].model_copy(
        update={
            "reasoning_blocks": [
                ReasoningBlock(type="thought_signature", provider="gemini", signature="c2ln", data="call_1"),
                ReasoningBlock(type="thinking", thinking="t", signature="anthropic-sig"),  # not Gemini's: not sent
            ]
        }
    )
    messages = [*CONVERSATION[:2], signed, *CONVERSATION[3:]]
    choice = NamedToolChoice(function=ToolChoiceFunction(name="get_weather"))
    headers, body = sent(
        server,
        "gm-req",
        provider,
        request(messages=messages, temperature=0.3, stop=["END"], response_format=_format(), tool_choice=choice),
    )
    assert server.requests["gm-req"][0].path == "/v1beta/models/m:generateContent"
    assert headers["x-goog-api-key"] == "gm-key"
    assert body["systemInstruction"] == {"parts": [{"text": "Be brief."}]}
    assert body["contents"] == [
        {"role": "user", "parts": [{"text": "Weather in Paris and Rome?"}]},
        {
            "role": "model",
            "parts": [
                {"text": "Checking."},
                {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}, "thoughtSignature": "c2ln"},
                {"functionCall": {"name": "get_weather", "args": {"city": "Rome"}}},
            ],
        },
        {  # each result names its call's function (Gemini has no call ids), then the next question
            "role": "user",
            "parts": [
                {"functionResponse": {"name": "get_weather", "response": {"result": "18C"}}},
                {"functionResponse": {"name": "get_weather", "response": {"result": "24C"}}},
                {"text": "Thanks, and in F?"},
            ],
        },
    ]
    assert body["tools"] == [
        {
            "functionDeclarations": [
                {"name": "get_weather", "description": "Weather for a city", "parameters": WEATHER.function.parameters}
            ]
        }
    ]
    assert body["toolConfig"] == {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["get_weather"]}}
    config = body["generationConfig"]
    assert config["maxOutputTokens"] == 100 and config["temperature"] == 0.3 and config["stopSequences"] == ["END"]
    assert config["responseMimeType"] == "application/json"
    # narrowed to Gemini's schema subset: nullable instead of a type list, const as enum, the rest dropped
    assert config["responseSchema"] == {
        "type": "object",
        "properties": {"city": {"type": "string", "nullable": True}, "kind": {"enum": ["weather"]}},
        "required": ["city"],
    }


def test_gemini_streams_with_alt_sse_and_thinking_budget(server: ReplayServer, http: HTTPClient) -> None:
    stream = b'data: {"candidates": [{"content": {"parts": [{"text": "ok"}],"role": "model"},"finishReason": "STOP"}]}\r\n\r\n'
    base = server.add("gm-stream", Reply(200, [("Content-Type", "text/event-stream")], stream))
    provider = GeminiProvider(http, api_key="k", base_url=f"{base}/v1beta")
    with provider.stream("m", request(reasoning=Reasoning(effort="medium"), tools=[])) as s:
        assert list(s) == ["ok"]
    captured = server.requests["gm-stream"][0]
    assert captured.path == "/v1beta/models/m:streamGenerateContent?alt=sse"
    config = json.loads(captured.body)["generationConfig"]
    assert config["thinkingConfig"] == {"thinkingBudget": 4096, "includeThoughts": True}


def test_bedrock_request(server: ReplayServer, http: HTTPClient) -> None:
    base = server.add("br-req", Reply(200, JSON, BEDROCK_OK))
    aws = load_aws("bedrock")
    provider = BedrockProvider(
        http, aws=aws, region="us-west-2", base_url=base, credentials=aws.static_credentials("AKID", "secret")
    )
    thought = ReasoningBlock(type="thinking", provider="bedrock", thinking="hmm", signature="sig")
    foreign = ReasoningBlock(type="thinking", thinking="other", signature="anthropic-sig")
    signed = CONVERSATION[2].model_copy(update={"reasoning_blocks": [thought, foreign]})
    messages = [*CONVERSATION[:2], signed, *CONVERSATION[3:]]
    headers, body = sent(
        server,
        "br-req",
        provider,
        request(messages, top_p=0.9, tool_choice="required", response_format=_format()),
        model="us.anthropic.claude-sonnet-4-5-v1:0",
    )
    assert server.requests["br-req"][0].path == "/model/us.anthropic.claude-sonnet-4-5-v1%3A0/converse"
    assert headers["authorization"].startswith("AWS4-HMAC-SHA256 Credential=AKID/")
    assert body["system"] == [{"text": "Be brief."}]
    assert body["inferenceConfig"] == {"maxTokens": 100, "topP": 0.9}
    assert body["messages"] == [
        {"role": "user", "content": [{"text": "Weather in Paris and Rome?"}]},
        {
            "role": "assistant",
            "content": [  # Bedrock's own thinking block first, verbatim; Anthropic's is not sent
                {"reasoningContent": {"reasoningText": {"text": "hmm", "signature": "sig"}}},
                {"text": "Checking."},
                {"toolUse": {"toolUseId": "call_1", "name": "get_weather", "input": {"city": "Paris"}}},
                {"toolUse": {"toolUseId": "call_2", "name": "get_weather", "input": {"city": "Rome"}}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"toolResult": {"toolUseId": "call_1", "content": [{"text": "18C"}]}},
                {"toolResult": {"toolUseId": "call_2", "content": [{"text": "24C"}]}},
                {"text": "Thanks, and in F?"},
            ],
        },
    ]
    tool: dict[str, Any] = body["toolConfig"]["tools"][0]["toolSpec"]
    assert tool == {
        "name": "get_weather",
        "description": "Weather for a city",
        "inputSchema": {"json": WEATHER.function.parameters},
    }
    assert body["toolConfig"]["toolChoice"] == {"any": {}}
    fmt = body["outputConfig"]["textFormat"]
    assert fmt["type"] == "json_schema" and fmt["structure"]["jsonSchema"]["name"] == "w"


def test_azure_preview_and_latest_are_the_v1_paths_api_version(server: ReplayServer, http: HTTPClient) -> None:
    """``preview`` opts the v1 path into preview features; it is not a dated deployment-URL version."""
    for version in ("preview", "latest"):
        base = server.add(f"az-{version}", Reply(200, JSON, OPENAI_OK))
        provider = AzureOpenAIProvider(http, api_key="k", base_url=base + "/openai/v1/", api_version=version)
        _, body = sent(server, f"az-{version}", provider, request(), model="gpt-4o")
        assert server.requests[f"az-{version}"][0].path == f"/openai/v1/chat/completions?api-version={version}"
        assert body["model"] == "gpt-4o" and body["max_completion_tokens"] == 100
    base = server.add("az-v1-named", Reply(200, JSON, OPENAI_OK))
    provider = AzureOpenAIProvider(http, api_key="k", base_url=base, api_version="v1")
    sent(server, "az-v1-named", provider, request(), model="gpt-4o")
    assert server.requests["az-v1-named"][0].path == "/openai/v1/chat/completions"


def test_bedrock_writes_earlier_tool_turns_as_text_when_it_sends_no_tools() -> None:
    """Converse refuses toolUse/toolResult blocks without a toolConfig (a summary turn, tool history
    handed on by a client, or a fallback to a request without tools)."""
    from workers.llm.bedrock import build_body as bedrock_body

    body = bedrock_body(request(tools=[]))
    assert "toolConfig" not in body
    assert [m["role"] for m in body["messages"]] == ["user", "assistant", "user"]
    assert body["messages"][1]["content"][1:] == [
        {"text": '[call call_1 of tool get_weather: {"city": "Paris"}]'},
        {"text": '[call call_2 of tool get_weather: {"city": "Rome"}]'},
    ]
    assert body["messages"][2]["content"] == [
        {"text": "[result of tool get_weather (call call_1)]: 18C"},
        {"text": "[result of tool get_weather (call call_2)]: 24C"},
        {"text": "Thanks, and in F?"},
    ]
    blocks = json.dumps(body)
    assert "toolUse" not in blocks and "toolResult" not in blocks
    # with tools, the blocks are Converse's own
    assert "toolResult" in json.dumps(bedrock_body(request()))

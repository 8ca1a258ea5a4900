"""The official openai SDK, unchanged, pointed at the gateway with ``base_url``.

Every request runs as a queued job: SDK -> gateway -> Redis -> in-process worker -> simulator.
"""

from __future__ import annotations

import json

import openai
import pytest

from producers.gateway.server import GatewayThread
from simulator.app import SimulatorThread

MODEL = "openai:gpt-4o-mini"
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Tell me about queues."}]
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["c", "f"]}},
            "required": ["city"],
        },
    },
}


def test_non_streaming_completion(sdk: openai.OpenAI, sdk_gateway: GatewayThread) -> None:
    raw = sdk.chat.completions.with_raw_response.create(model=MODEL, messages=MESSAGES, max_tokens=50)
    completion = raw.parse()
    assert completion.object == "chat.completion" and completion.id.startswith("chatcmpl-")
    choice = completion.choices[0]
    assert choice.finish_reason == "stop" and choice.message.role == "assistant"
    assert len(choice.message.content.split()) == 20 and not choice.message.tool_calls
    assert completion.usage.completion_tokens == 20 and completion.usage.total_tokens > 20
    assert completion.model == MODEL
    # the job behind it, through the jobs API with the same token
    job_id = raw.headers["x-llmq-job-id"]
    job = sdk.get(f"/jobs/{job_id}", cast_to=object)
    assert job["result"]["content"] == choice.message.content and job["status"] == "succeeded"


def test_streaming_completion_with_usage(sdk: openai.OpenAI, simulator: SimulatorThread) -> None:
    simulator.simulator.config.tokens_per_s = 200
    once = sdk.chat.completions.create(model=MODEL, messages=MESSAGES).choices[0].message.content
    chunks = list(
        sdk.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True, stream_options={"include_usage": True})
    )
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    content_chunks = [c for c in chunks if c.choices]
    assert content_chunks[0].choices[0].delta.role == "assistant"
    assert len([c for c in content_chunks if c.choices[0].delta.content]) > 1  # really streamed
    assert "".join(c.choices[0].delta.content or "" for c in content_chunks) == once
    assert content_chunks[-1].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 20
    assert all(c.usage is None for c in chunks[:-1])


def test_streaming_without_usage_option_has_no_usage_chunk(sdk: openai.OpenAI) -> None:
    chunks = list(sdk.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True))
    assert all(c.choices for c in chunks) and chunks[-1].choices[0].finish_reason == "stop"


def test_tool_calls_non_streaming_and_the_tool_result_round_trip(sdk: openai.OpenAI) -> None:
    completion = sdk.chat.completions.create(
        model=MODEL + "~tools",
        messages=[{"role": "user", "content": "Weather in Paris?"}],
        tools=[WEATHER],
        tool_choice="auto",
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    call = choice.message.tool_calls[0]
    assert call.type == "function" and call.function.name == "get_weather" and call.id
    assert "city" in json.loads(call.function.arguments)
    followup = sdk.chat.completions.create(
        model=MODEL,
        messages=[
            {"role": "user", "content": "Weather in Paris?"},
            choice.message.model_dump(exclude_none=True),
            {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temp_c": 18})},
        ],
        tools=[WEATHER],
    )
    assert followup.choices[0].finish_reason == "stop" and followup.choices[0].message.content


def test_tool_calls_streaming(sdk: openai.OpenAI) -> None:
    messages = [{"role": "user", "content": "Weather in Oslo and Rome?"}]
    chunks = list(
        sdk.chat.completions.create(model=MODEL + "~tools@2", messages=messages, tools=[WEATHER], stream=True)
    )
    deltas = [tc for c in chunks for tc in (c.choices[0].delta.tool_calls or [])]
    assert [d.index for d in deltas] == [0, 1] and all(d.function.name == "get_weather" for d in deltas)
    assert all("city" in json.loads(d.function.arguments) for d in deltas)
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    # the SDK's own accumulator rebuilds the same message
    with sdk.chat.completions.stream(model=MODEL + "~tools@2", messages=messages, tools=[WEATHER]) as stream:
        final = stream.get_final_completion()
    assert [c.function.name for c in final.choices[0].message.tool_calls] == ["get_weather", "get_weather"]


async def test_async_client_streams(sdk: openai.OpenAI) -> None:
    async with openai.AsyncOpenAI(base_url=sdk.base_url, api_key=sdk.api_key, max_retries=0) as client:
        stream = await client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)
        text = "".join([c.choices[0].delta.content or "" async for c in stream])
    assert len(text.split()) == 20


def test_errors_map_to_the_sdk_exceptions(sdk: openai.OpenAI, sdk_gateway: GatewayThread) -> None:
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{sdk_gateway.url}/v1", api_key="not-a-token", max_retries=0).models.list()
    with pytest.raises(openai.BadRequestError, match="Unrecognized request argument supplied: bogus"):
        sdk.chat.completions.create(model=MODEL, messages=MESSAGES, extra_body={"bogus": 1})
    with pytest.raises(openai.BadRequestError) as info:
        sdk.chat.completions.create(model=MODEL, messages=[])
    assert info.value.param == "messages"
    for stream in (False, True):  # an upstream 404 before any content is an HTTP 404, streaming or not
        with pytest.raises(openai.NotFoundError):
            result = sdk.chat.completions.create(model=MODEL + "~404", messages=MESSAGES, stream=stream)
            list(result) if stream else None


def test_mid_stream_failure_raises_in_the_sdk(sdk: openai.OpenAI, simulator: SimulatorThread) -> None:
    simulator.simulator.config.tokens_per_s = 100
    got: list[str] = []
    with pytest.raises(openai.APIError, match=r"after the first delta"):
        for chunk in sdk.chat.completions.create(model=MODEL + "~midstream", messages=MESSAGES, stream=True):
            got.append(chunk.choices[0].delta.content or "")
    assert "".join(got)  # the text before the failure did arrive

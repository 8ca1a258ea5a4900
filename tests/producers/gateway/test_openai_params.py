"""The official openai SDK's structured outputs and request parameters, against the gateway.

``client.chat.completions.parse(response_format=SomePydanticModel)`` and its streaming sibling
``client.chat.completions.stream(...)`` run as queued jobs: SDK -> gateway -> Redis -> worker ->
simulator, which answers JSON valid for the model's schema (invalid first with ``~badjson``).
"""

from __future__ import annotations

import base64
import struct

import openai
import pytest
from pydantic import BaseModel

from producers.gateway.server import GatewayThread
from simulator.app import SimulatorThread

MESSAGES = [{"role": "user", "content": "Extract the event: lunch with Alice on Friday."}]


class Person(BaseModel):
    name: str
    age: int


class Event(BaseModel):
    title: str
    day: str
    attendees: list[Person]


@pytest.mark.parametrize("model", ["openai:gpt-4o-mini", "anthropic:claude-sonnet-4-5", "ollama:llama3.1"])
def test_parse_returns_the_parsed_object(sdk: openai.OpenAI, simulator: SimulatorThread, model: str) -> None:
    completion = sdk.chat.completions.parse(model=model, messages=MESSAGES, response_format=Event)
    message = completion.choices[0].message
    assert isinstance(message.parsed, Event)
    assert message.parsed.attendees and isinstance(message.parsed.attendees[0], Person)
    assert message.refusal is None
    assert Event.model_validate_json(message.content or "") == message.parsed


def test_parse_after_a_repair(sdk: openai.OpenAI, simulator: SimulatorThread) -> None:
    raw = sdk.chat.completions.with_raw_response.parse(
        model="openai:gpt-4o-mini~badjson", messages=MESSAGES, response_format=Event
    )
    completion = raw.parse()
    assert isinstance(completion.choices[0].message.parsed, Event)
    assert simulator.simulator.stats.by_job[raw.headers["x-llmq-job-id"]] == 2


def test_parse_refusal(sdk: openai.OpenAI, simulator: SimulatorThread) -> None:
    completion = sdk.chat.completions.parse(
        model="openai:gpt-4o-mini~refusal", messages=MESSAGES, response_format=Event
    )
    message = completion.choices[0].message
    assert message.parsed is None and message.content is None
    assert message.refusal and "can't help" in message.refusal


def test_invalid_output_is_an_error(sdk: openai.OpenAI, simulator: SimulatorThread) -> None:
    with pytest.raises(openai.APIStatusError) as info:
        sdk.chat.completions.parse(model="openai:gpt-4o-mini~badjson*", messages=MESSAGES, response_format=Event)
    assert "response_format" in info.value.message


@pytest.mark.parametrize(
    "model", ["openai:gpt-4o-mini", "openai:gpt-4o-mini~badjson", "anthropic:claude-3-5-haiku-20241022"]
)
def test_streaming_parse(sdk: openai.OpenAI, simulator: SimulatorThread, model: str) -> None:
    with sdk.chat.completions.stream(model=model, messages=MESSAGES, response_format=Event) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_completion()
    assert "content.done" in kinds
    parsed = final.choices[0].message.parsed
    assert isinstance(parsed, Event) and parsed.attendees


def test_streaming_refusal(sdk: openai.OpenAI, simulator: SimulatorThread) -> None:
    with sdk.chat.completions.stream(
        model="openai:gpt-4o-mini~refusal", messages=MESSAGES, response_format=Event
    ) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_completion()
    assert "refusal.done" in kinds
    assert final.choices[0].message.refusal and final.choices[0].message.parsed is None


def test_request_parameters_reach_the_job(
    sdk: openai.OpenAI, sdk_gateway: GatewayThread, simulator: SimulatorThread
) -> None:
    tool = {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
    raw = sdk.chat.completions.with_raw_response.create(
        model="openai:gpt-4o-mini",
        messages=[{"role": "user", "content": "weather?"}],
        tools=[tool],
        tool_choice="required",
        parallel_tool_calls=False,
        stop=["never"],
        top_p=0.5,
        seed=11,
        user="end-user-7",
        reasoning_effort="low",
    )
    completion = raw.parse()
    assert completion.choices[0].message.tool_calls[0].function.name == "get_weather"
    job = sdk.get(f"/jobs/{raw.headers['x-llmq-job-id']}", cast_to=object)
    assert isinstance(job, dict) and job["status"] == "succeeded"


def test_image_parts(sdk: openai.OpenAI, simulator: SimulatorThread) -> None:
    raw = b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + struct.pack(">II", 64, 64) + b"\x08\x02\0\0\0"
    url = "data:image/png;base64," + base64.b64encode(raw + b"\0" * 16).decode()
    content = [{"type": "text", "text": "What is this?"}, {"type": "image_url", "image_url": {"url": url}}]
    completion = sdk.chat.completions.create(
        model="anthropic:claude-sonnet-4-5", messages=[{"role": "user", "content": content}]
    )
    assert completion.choices[0].message.content
    assert completion.usage is not None and completion.usage.prompt_tokens > 255  # the image was counted


def test_a_provider_that_cannot_is_a_400_naming_it(sdk: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        sdk.chat.completions.create(model="anthropic:claude-sonnet-4-5", messages=MESSAGES, seed=3)
    assert "anthropic does not support seed" in info.value.message


def test_an_oversized_image_is_a_400(sdk: openai.OpenAI) -> None:
    raw = b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + struct.pack(">II", 9000, 10) + b"\x08\x02\0\0\0"
    url = "data:image/png;base64," + base64.b64encode(raw + b"\0" * 16).decode()
    content = [{"type": "image_url", "image_url": {"url": url}}]
    with pytest.raises(openai.BadRequestError, match="8000 px"):
        sdk.chat.completions.create(model="openai:gpt-4o", messages=[{"role": "user", "content": content}])


def test_sampling_parameters_come_back_as_openai_answers_them(sdk: openai.OpenAI, simulator: SimulatorThread) -> None:
    """n, logprobs/top_logprobs, the penalties and logit_bias: passed to the job, sent to the provider,
    and the answers and log probabilities back in OpenAI's shapes (whole body)."""
    completion = sdk.chat.completions.create(
        model="openai:gpt-4o-mini",
        messages=MESSAGES,
        n=3,
        logprobs=True,
        top_logprobs=2,
        presence_penalty=0.5,
        frequency_penalty=-0.25,
        logit_bias={"50256": -100},
    )
    assert [c.index for c in completion.choices] == [0, 1, 2]
    first = completion.choices[0]
    assert first.message.content and all(c.message.content == first.message.content for c in completion.choices)
    for choice in completion.choices:
        assert choice.logprobs is not None and choice.logprobs.content
        assert "".join(t.token for t in choice.logprobs.content) == first.message.content
        assert all(len(t.top_logprobs) == 2 and t.top_logprobs[0].token == t.token for t in choice.logprobs.content)
    assert completion.usage is not None and completion.usage.completion_tokens == 3 * len(first.logprobs.content)


def test_sampling_parameters_stream_as_openai_streams_them(sdk: openai.OpenAI, simulator: SimulatorThread) -> None:
    stream = sdk.chat.completions.create(
        model="openai:gpt-4o-mini",
        messages=MESSAGES,
        n=2,
        logprobs=True,
        top_logprobs=1,
        stream=True,
        stream_options={"include_usage": True},
    )
    text: dict[int, str] = {}
    tokens: dict[int, list[str]] = {}
    finish: dict[int, str | None] = {}
    for chunk in stream:
        for choice in chunk.choices:
            text[choice.index] = text.get(choice.index, "") + (choice.delta.content or "")
            if choice.logprobs is not None and choice.logprobs.content:
                tokens.setdefault(choice.index, []).extend(t.token for t in choice.logprobs.content)
            if choice.finish_reason:
                finish[choice.index] = choice.finish_reason
    assert sorted(text) == [0, 1] and text[0] and text[1] == text[0]
    assert "".join(tokens[0]) == text[0] and "".join(tokens[1]) == text[1]
    assert finish == {0: "stop", 1: "stop"}


@pytest.mark.parametrize(
    ("model", "argument", "refusal"),
    [
        ("anthropic:claude-sonnet-4-5", {"presence_penalty": 0.5}, "anthropic does not support presence_penalty"),
        ("anthropic:claude-sonnet-4-5", {"n": 2}, "anthropic does not support n"),
        ("ollama:llama3.1", {"logit_bias": {"1": 5}}, "ollama does not support logit_bias"),
        ("anthropic:claude-sonnet-4-5", {"logprobs": True}, "anthropic does not support logprobs"),
        ("openai:gpt-4o-mini", {"top_logprobs": 2}, "top_logprobs needs logprobs"),
        ("openai:gpt-4o-mini", {"n": 2, "response_format": {"type": "json_object"}}, "n > 1 cannot be combined"),
    ],
)
def test_a_sampling_parameter_a_provider_lacks_is_a_400_naming_it(
    sdk: openai.OpenAI, model: str, argument: dict[str, object], refusal: str
) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        sdk.chat.completions.create(model=model, messages=MESSAGES, **argument)  # type: ignore[call-overload]
    assert refusal in info.value.message
    if "does not support" in refusal:  # the capability table names the field, as OpenAI's param
        assert info.value.param == next(iter(argument))

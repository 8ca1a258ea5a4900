"""The response cache through the OpenAI-compatible route: ``cache`` as an llmqueue extension of the
body (``extra_body`` in the SDKs), a hit answered in OpenAI's shapes, streamed and not."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest

from producers.gateway import GatewaySettings, create_gateway
from producers.gateway.openai_compat import ChatStreamRenderer
from producers.gateway.server import GatewayThread
from simulator.app import SimulatorThread

TOKEN = "tok-cache-5d1a07e3f9"
MESSAGES = [{"role": "user", "content": "answer me once"}]


@pytest.fixture
def sdk(redis_url: str, worker: object) -> Iterator[openai.OpenAI]:
    with GatewayThread(create_gateway(GatewaySettings(redis_url=redis_url, tokens={TOKEN: "team-c"}))) as server:
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=TOKEN, max_retries=0, timeout=60)
        yield client
        client.close()


def test_chat_completions_ask_for_the_cache_and_a_hit_is_answered_in_openai_shapes(
    sdk: openai.OpenAI, simulator: SimulatorThread
) -> None:
    cache = {"cache": {"ttl_s": 600}}
    first = sdk.chat.completions.with_raw_response.create(
        model="openai:gpt-4o-mini", messages=MESSAGES, max_tokens=20, extra_body=cache
    )
    answer = first.parse()
    assert "x-llmq-cached" not in first.headers
    second = sdk.chat.completions.with_raw_response.create(
        model="openai:gpt-4o-mini", messages=MESSAGES, max_tokens=20, extra_body=cache
    )
    hit = second.parse()
    assert second.headers["x-llmq-cached"] == "true" and simulator.simulator.stats.requests == 1
    assert hit.choices[0].message.content == answer.choices[0].message.content
    assert hit.usage is not None and answer.usage is not None
    assert hit.usage.completion_tokens == answer.usage.completion_tokens
    chunks = list(
        sdk.chat.completions.create(
            model="openai:gpt-4o-mini",
            messages=MESSAGES,
            max_tokens=20,
            stream=True,
            stream_options={"include_usage": True},
            extra_body=cache,
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == answer.choices[0].message.content and simulator.simulator.stats.requests == 1
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    with pytest.raises(openai.BadRequestError):
        sdk.chat.completions.create(model="openai:gpt-4o-mini", messages=MESSAGES, extra_body={"cache": {"ttl_s": 0}})


def test_cache_control_breakpoints_reach_anthropic_through_chat_completions(
    sdk: openai.OpenAI, simulator: SimulatorThread
) -> None:
    """A LiteLLM-style client marks its long system prompt with ``cache_control`` on a text part:
    the gateway keeps it, the worker passes it to Anthropic, the second request reads the prefix."""
    system = {
        "role": "system",
        "content": [{"type": "text", "text": "Background: " + "capital city facts " * 400, "cache_control": {}}],
    }
    messages = [system, {"role": "user", "content": "The capital of France?"}]
    first = sdk.chat.completions.create(model="anthropic:claude-sonnet-4-5", messages=messages, max_tokens=20)  # type: ignore[arg-type]
    second = sdk.chat.completions.create(model="anthropic:claude-sonnet-4-5", messages=messages, max_tokens=20)  # type: ignore[arg-type]
    assert first.usage is not None and second.usage is not None
    assert first.usage.prompt_tokens_details is not None and second.usage.prompt_tokens_details is not None
    assert first.usage.prompt_tokens_details.cached_tokens == 0
    assert second.usage.prompt_tokens_details.cached_tokens and second.usage.prompt_tokens_details.cached_tokens > 1024


def _contents(frames: bytes) -> tuple[str, list[str]]:
    """The chunks' joined content and the error codes of an SSE body."""
    import json

    text, errors = "", []
    for line in frames.decode().splitlines():
        if not line.startswith("data: {"):
            continue
        body = json.loads(line[len("data: ") :])
        if "error" in body:
            errors.append(body["error"]["code"])
        for choice in body.get("choices") or []:
            text += choice["delta"].get("content") or ""
    return text, errors


def test_a_stream_that_starts_over_is_continued_not_repeated() -> None:
    """A follower streams its leader's text; the leader fails, the follower calls itself and its
    answer starts over (``repair``), as a redelivered job's run 2 does: text sent cannot be taken
    back, so the stream goes on past it when the new answer repeats it, and ends with an error
    (not a garbled answer) when it differs."""
    from workers.contract import CompletionResult, DeltaEvent, DoneEvent, RepairEvent, StartEvent

    def render(events: list[object]) -> bytes:
        renderer = ChatStreamRenderer("job_1", model="m", include_usage=False)
        return b"".join(renderer.frames(e) for e in events)  # type: ignore[arg-type]

    def done(text: str) -> DoneEvent:
        return DoneEvent(job_id="job_1", seq=9, result=CompletionResult(id="job_1", status="succeeded", content=text))

    start, repair = (
        StartEvent(job_id="job_1", seq=0, model="m"),
        RepairEvent(job_id="job_1", seq=3, attempt=1, errors=["x"]),
    )
    delta = [DeltaEvent(job_id="job_1", seq=i, text=t) for i, t in enumerate(["Hello wor", "Hel", "lo", " world!"])]
    same = render([start, delta[0], repair, delta[1], delta[2], delta[3], done("Hello world!")])
    assert _contents(same) == ("Hello world!", []) and same.endswith(b"data: [DONE]\n\n")
    rerun = StartEvent(job_id="job_1", seq=4, model="m", run=2)
    assert _contents(render([start, delta[0], rerun, delta[1], delta[2], delta[3], done("Hello world!")])) == (
        "Hello world!",
        [],
    )
    other = DeltaEvent(job_id="job_1", seq=5, text="Goodbye")
    differs = render([start, delta[0], repair, other, done("Goodbye")])
    assert _contents(differs) == ("Hello wor", ["stream_restarted"]) and b"[DONE]" not in differs
    shorter = render([start, delta[0], repair, delta[1], done("Hel")])
    assert _contents(shorter) == ("Hello wor", ["stream_restarted"])

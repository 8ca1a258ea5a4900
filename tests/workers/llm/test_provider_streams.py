"""Streams that go wrong, for all three providers, over real local HTTP (and a fake body seam).

A stream is a success only after its terminator; a cut, stalled, malformed or unterminated stream
is an error of our tree; stopping early or cancelling always closes the response.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator

import pytest

from tests.support.doubles import provider_for
from tests.support.replay_server import ReplayServer, Reply, local_client
from workers.contract import Message, RequestParams
from workers.llm.anthropic import AnthropicStream
from workers.llm.base import ChatRequest, ChatStream, ResponseStream
from workers.llm.errors import (
    IncompleteStreamError,
    InsufficientQuotaError,
    JobCancelledError,
    LLMQError,
    ProviderConnectionError,
    ProviderTimeoutError,
    RateLimitedError,
    ServerError,
)
from workers.llm.httpclient import HTTPClient
from workers.llm.ollama import OllamaStream
from workers.llm.openai import OpenAIProvider, OpenAIStream

PROVIDERS = ["openai", "anthropic", "ollama"]
TEXTS = ["Hel", "lo", " wörld"]
REQUEST = ChatRequest(messages=[Message(role="user", content="hi")], params=RequestParams(max_tokens=16))


def _sse(event: str | None, payload: object) -> bytes:
    head = f"event: {event}\n".encode() if event else b""
    return head + b"data: " + json.dumps(payload).encode() + b"\n\n"


def openai_delta(text: str) -> bytes:
    return _sse(None, {"id": "c1", "model": "m", "choices": [{"index": 0, "delta": {"content": text}}]})


def anthropic_delta(text: str) -> bytes:
    return _sse(
        "content_block_delta",
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}},
    )


def ollama_delta(text: str) -> bytes:
    return json.dumps({"model": "m", "message": {"role": "assistant", "content": text}, "done": False}).encode() + b"\n"


DELTA = {"openai": openai_delta, "anthropic": anthropic_delta, "ollama": ollama_delta}


def wire(provider: str, texts: list[str] = TEXTS) -> tuple[bytes, bytes, bytes, bytes]:
    """``(head, deltas, tail, terminator)`` of a well-formed stream."""
    deltas = b"".join(DELTA[provider](t) for t in texts)
    if provider == "openai":
        tail = _sse(None, {"id": "c1", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        tail += _sse(None, {"id": "c1", "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2}})
        return b"", deltas, tail, b"data: [DONE]\n\n"
    if provider == "anthropic":
        start = {"id": "msg_1", "model": "m", "usage": {"input_tokens": 3, "output_tokens": 1}}
        head = _sse("message_start", {"type": "message_start", "message": start})
        block = {"type": "text", "text": ""}
        head += _sse("content_block_start", {"type": "content_block_start", "index": 0, "content_block": block})
        tail = _sse("content_block_stop", {"type": "content_block_stop", "index": 0})
        delta = {"stop_reason": "end_turn"}
        tail += _sse("message_delta", {"type": "message_delta", "delta": delta, "usage": {"output_tokens": 2}})
        return head, deltas, tail, _sse("message_stop", {"type": "message_stop"})
    done = {"model": "m", "message": {"role": "assistant", "content": ""}, "done": True, "done_reason": "stop"}
    last = json.dumps(done | {"prompt_eval_count": 3, "eval_count": 2}).encode() + b"\n"
    # without its terminator, the last line of an Ollama stream is an ordinary done: false line
    return b"", deltas, b"", last


CONTENT_TYPE = {"openai": "text/event-stream", "anthropic": "text/event-stream", "ollama": "application/x-ndjson"}


def serve(server: ReplayServer, key: str, provider: str, body: bytes, **reply: object) -> str:
    return server.add(key, Reply(200, [("Content-Type", CONTENT_TYPE[provider])], body, **reply))  # type: ignore[arg-type]


def drain(stream: ChatStream) -> list[str]:
    with stream:
        return list(stream)


@pytest.mark.parametrize("name", PROVIDERS)
def test_a_complete_stream(name: str, server: ReplayServer, http: HTTPClient) -> None:
    base = serve(server, f"ok-{name}", name, b"".join(wire(name)))
    stream = provider_for(name, http, base).stream("m", REQUEST)
    assert drain(stream) == TEXTS
    assert stream.completed and stream.finish_reason == "stop"
    assert stream.usage is not None and (stream.usage.prompt_tokens, stream.usage.completion_tokens) == (3, 2)


@pytest.mark.parametrize("name", PROVIDERS)
def test_crlf_line_endings(name: str, server: ReplayServer, http: HTTPClient) -> None:
    base = serve(server, f"crlf-{name}", name, b"".join(wire(name)).replace(b"\n", b"\r\n"))
    stream = provider_for(name, http, base).stream("m", REQUEST)
    assert drain(stream) == TEXTS and stream.completed


@pytest.mark.parametrize("name", PROVIDERS)
def test_a_stream_without_its_terminator_is_incomplete(name: str, server: ReplayServer, http: HTTPClient) -> None:
    head, deltas, tail, _ = wire(name)
    base = serve(server, f"noterm-{name}", name, head + deltas + tail)
    stream = provider_for(name, http, base).stream("m", REQUEST)
    with pytest.raises(IncompleteStreamError, match="stream ended without") as info:
        drain(stream)
    assert info.value.is_retryable and info.value.provider == name
    assert stream.text == "".join(TEXTS) and not stream.completed


@pytest.mark.parametrize("name", PROVIDERS)
def test_a_cut_connection_is_incomplete(name: str, server: ReplayServer, http: HTTPClient) -> None:
    body = b"".join(wire(name))
    base = serve(server, f"cut-{name}", name, body, cut=len(body) // 2)
    with pytest.raises(IncompleteStreamError):
        drain(provider_for(name, http, base).stream("m", REQUEST))


@pytest.mark.parametrize("name", PROVIDERS)
def test_a_malformed_line_is_incomplete(name: str, server: ReplayServer, http: HTTPClient) -> None:
    head, deltas, tail, end = wire(name)
    broken = b'data: {"choices": [{"delta": {"content": "bro\n\n' if name != "ollama" else b'{"message": {"cont\n'
    base = serve(server, f"malformed-{name}", name, head + deltas + broken + tail + end)
    stream = provider_for(name, http, base).stream("m", REQUEST)
    with pytest.raises(IncompleteStreamError, match="malformed"):
        drain(stream)
    assert stream.text == "".join(TEXTS)


@pytest.mark.parametrize("name", PROVIDERS)
def test_a_stalled_stream_times_out(name: str, server: ReplayServer) -> None:
    head, deltas, _, _ = wire(name)
    base = serve(server, f"stall-{name}", name, head + deltas, stall=True)
    with local_client(read_timeout=0.3) as client:
        stream = provider_for(name, client, base).stream("m", REQUEST)
        with pytest.raises(ProviderTimeoutError):
            drain(stream)
        assert stream.text == "".join(TEXTS)


def test_connection_refused(http: HTTPClient) -> None:
    with ReplayServer() as gone:
        origin = gone.origin
    provider = OpenAIProvider(http, api_key="k", base_url=f"{origin}/v1")
    with pytest.raises(ProviderConnectionError):
        provider.stream("m", REQUEST)


@pytest.mark.parametrize("name", PROVIDERS)
def test_a_consumer_that_stops_early_closes_the_response(name: str, server: ReplayServer, http: HTTPClient) -> None:
    head, deltas, _, _ = wire(name)
    reply = Reply(200, [("Content-Type", CONTENT_TYPE[name])], head + deltas, endless=DELTA[name]("more "))
    base = server.add(f"early-{name}", reply)
    for text in provider_for(name, http, base).stream("m", REQUEST):
        assert text == TEXTS[0]
        break  # no close(), no with: dropping the iterator must be enough
    assert reply.disconnected.wait(5), "the upstream connection was left open"


@pytest.mark.parametrize("name", PROVIDERS)
@pytest.mark.parametrize("endless", [True, False], ids=["flowing", "stalled"])
def test_closing_from_another_thread_cancels(name: str, endless: bool, server: ReplayServer, http: HTTPClient) -> None:
    """The job's cancel watcher closes the stream while the worker thread is reading it."""
    head, deltas, _, _ = wire(name)
    more = DELTA[name]("more ") if endless else None
    base = serve(server, f"cancel-{name}-{endless}", name, head + deltas, endless=more, stall=not endless)
    stream = provider_for(name, http, base).stream("m", REQUEST)
    errors: list[BaseException] = []

    def read() -> None:
        try:
            for _ in stream:
                pass
        except BaseException as exc:
            errors.append(exc)

    reader = threading.Thread(target=read)
    reader.start()
    time.sleep(0.2)
    started = time.monotonic()
    stream.close()
    reader.join(5)
    assert not reader.is_alive(), "close() did not wake the reading thread"
    assert time.monotonic() - started < 5
    assert len(errors) == 1 and type(errors[0]) is JobCancelledError


class FakeBody:
    """The ``ResponseBody`` seam: bytes in given pieces, counting closes."""

    def __init__(self, pieces: list[bytes], headers: dict[str, str] | None = None) -> None:
        self.pieces = pieces
        self.headers = headers or {}
        self.closes = 0

    def iter_bytes(self) -> Iterator[bytes]:
        yield from self.pieces

    def close(self) -> None:
        self.closes += 1


STREAMS: dict[str, type[ResponseStream]] = {
    "openai": OpenAIStream,
    "anthropic": AnthropicStream,
    "ollama": OllamaStream,
}


def fake_stream(name: str, body: bytes, piece: int = 5) -> tuple[ResponseStream, FakeBody]:
    fake = FakeBody([body[i : i + piece] for i in range(0, len(body), piece)])
    return STREAMS[name](fake, provider=name, model="m"), fake  # type: ignore[call-arg]


@pytest.mark.parametrize("name", PROVIDERS)
def test_every_way_out_closes_the_body(name: str) -> None:
    body = b"".join(wire(name))
    stream, fake = fake_stream(name, body)
    assert list(stream) == TEXTS and fake.closes == 1
    stream, fake = fake_stream(name, body)
    next(iter(stream))
    del stream  # the generator is dropped mid-stream
    assert fake.closes == 1
    stream, fake = fake_stream(name, body[: len(body) // 2])
    with pytest.raises(IncompleteStreamError):
        list(stream)
    assert fake.closes == 1


@pytest.mark.parametrize("name", PROVIDERS)
def test_closed_before_reading_or_read_twice(name: str) -> None:
    stream, fake = fake_stream(name, b"".join(wire(name)))
    stream.close()
    with pytest.raises(JobCancelledError):
        list(stream)
    assert fake.closes >= 1 and stream.closed
    stream, _ = fake_stream(name, b"".join(wire(name)))
    list(stream)
    with pytest.raises(RuntimeError, match="only once"):
        list(stream)


@pytest.mark.parametrize(
    ("payload", "cls"),
    [
        ({"error": {"message": "Rate limit", "type": "tokens", "code": "rate_limit_exceeded"}}, RateLimitedError),
        (
            {"error": {"message": "quota", "type": "insufficient_quota", "code": "insufficient_quota"}},
            InsufficientQuotaError,
        ),
        ({"error": {"message": "oops", "type": "server_error", "code": None}}, ServerError),
    ],
)
def test_openai_error_inside_a_stream(payload: dict[str, object], cls: type[LLMQError]) -> None:
    stream, _ = fake_stream("openai", openai_delta("Hi") + _sse(None, payload))
    with pytest.raises(cls) as info:
        list(stream)
    assert info.value.details and info.value.details["in_stream"] and stream.text == "Hi"


@pytest.mark.parametrize(("kind", "cls"), [("rate_limit_error", RateLimitedError), ("api_error", ServerError)])
def test_anthropic_error_event(kind: str, cls: type[LLMQError]) -> None:
    head, deltas, _, _ = wire("anthropic")
    error = _sse("error", {"type": "error", "error": {"type": kind, "message": "nope"}})
    stream, _ = fake_stream("anthropic", head + deltas + error)
    with pytest.raises(cls, match="nope"):
        list(stream)


@pytest.mark.parametrize("name", ["openai", "anthropic"])
def test_sse_data_spread_over_several_lines(name: str) -> None:
    """The SSE spec joins consecutive ``data:`` lines of one event with a newline."""
    head, deltas, tail, end = wire(name)
    split = b"".join(line.replace(b', "', b',\ndata: "', 1) for line in deltas.split(b"\n\n") if line)
    split = split.replace(b"}data:", b"}\n\ndata:").replace(b"}event:", b"}\n\nevent:") + b"\n\n"
    assert split.count(b"\ndata: ") > len(TEXTS)  # really multi-line
    stream, _ = fake_stream(name, head + split + tail + end)
    assert list(stream) == TEXTS and stream.completed


def test_unexpected_payload_shape_is_incomplete_not_a_crash() -> None:
    stream, _ = fake_stream("openai", _sse(None, {"choices": ["not an object"]}) + b"data: [DONE]\n\n")
    with pytest.raises(IncompleteStreamError, match="unexpected stream payload"):
        list(stream)


def test_ollama_tool_call_without_id_and_thinking() -> None:
    lines = [
        {"model": "m", "message": {"role": "assistant", "content": "", "thinking": "Hmm."}, "done": False},
        {
            "model": "m",
            "message": {
                "role": "assistant",
                "content": "",
                "tool_calls": [{"function": {"name": "f", "arguments": {"a": 1}}}],
            },
            "done": False,
        },
        {"model": "m", "message": {"role": "assistant", "content": ""}, "done": True, "eval_count": 5},
    ]
    stream, _ = fake_stream("ollama", b"".join(json.dumps(x).encode() + b"\n" for x in lines))
    assert list(stream) == []
    assert stream.thinking == "Hmm." and stream.finish_reason == "tool_calls" and stream.native_finish_reason is None
    assert [(c.function.name, c.function.arguments) for c in stream.tool_calls] == [("f", '{"a":1}')]
    assert re.fullmatch(r"call_[0-9a-f]{24}", stream.tool_calls[0].id)  # synthesized: unique (new_call_id)
    assert stream.usage is not None and (stream.usage.prompt_tokens, stream.usage.completion_tokens) == (0, 5)

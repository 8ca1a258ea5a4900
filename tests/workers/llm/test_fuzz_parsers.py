"""Fuzz: generated upstream bytes thrown at every provider's parsers (hypothesis).

Stream bytes (cut into arbitrary chunks), whole bodies and error bodies: each case ends in a
result or one of our typed errors -- never another exception, never a hang. The whole-body path
runs the real HTTP client over ``httpx``'s in-process transport.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping

import httpx2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from workers.contract import Message, RequestParams
from workers.llm.anthropic import AnthropicProvider
from workers.llm.base import ChatRequest
from workers.llm.errors import LLMQError
from workers.llm.httpclient import HTTPClient, HTTPSettings
from workers.llm.httpprovider import HTTPProvider
from workers.llm.ollama import OllamaProvider
from workers.llm.openai import OpenAIProvider

REQUEST = ChatRequest(messages=[Message(role="user", content="hi")], params=RequestParams(max_tokens=16))
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
# keys and values our parsers look at, so generated objects often reach the deeper branches
KEYS = ["choices", "delta", "content", "tool_calls", "function", "arguments", "index", "id", "name", "usage",
        "finish_reason", "error", "type", "message", "text", "done", "model", "stop_reason", "content_block",
        "input_json", "partial_json", "prompt_tokens", "completion_tokens", "input_tokens", "output_tokens",
        "eval_count", "prompt_eval_count", "refusal", "thinking", "done_reason"]  # fmt: skip
shaped = st.recursive(
    st.none() | st.integers(-5, 5) | st.sampled_from(["", "x", "message_stop", "text_delta", "stop", "tool_use"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(KEYS), inner, max_size=5),
    max_leaves=15,
)
anything = json_values | shaped
# each provider's own event shapes with arbitrary values where text, numbers or objects belong
templates = st.one_of(
    st.fixed_dictionaries(
        {"choices": st.lists(st.fixed_dictionaries({"delta": st.dictionaries(
            st.sampled_from(["content", "tool_calls", "refusal", "role"]), anything, max_size=3)},
            optional={"finish_reason": anything, "index": anything}), max_size=2)},
        optional={"usage": anything, "id": anything, "model": anything},
    ),
    st.fixed_dictionaries(
        {"type": st.sampled_from(["message_start", "content_block_start", "content_block_delta",
                                  "content_block_stop", "message_delta", "message_stop", "error", "ping"])},
        optional={"index": anything, "delta": st.dictionaries(st.sampled_from(
            ["type", "text", "partial_json", "thinking", "stop_reason"]), anything | st.sampled_from(
            ["text_delta", "input_json_delta", "thinking_delta"]), max_size=3),
            "content_block": anything, "message": anything, "usage": anything, "error": anything},
    ),
    st.fixed_dictionaries(
        {"message": st.dictionaries(st.sampled_from(["content", "tool_calls", "thinking", "role"]), anything,
                                    max_size=3)},
        optional={"done": anything, "done_reason": anything, "eval_count": anything, "model": anything},
    ),
)  # fmt: skip
FRAGMENTS = [b"data: ", b"data:", b"[DONE]", b"\n", b"\r\n", b"\n\n", b"event: ", b"message_stop", b"{", b"}",
             b'"', b":", b"\xff\xfe", b"\xe2\x82", b'{"error":{"message":"boom","type":"server_error"}}',
             b'{"type":"message_start","message":{"id":"m","usage":{"input_tokens":1}}}',
             b'{"done":true,"done_reason":"stop"}']  # fmt: skip


def _event(value: object, ndjson: bool) -> bytes:
    text = json.dumps(value).encode()
    return text + b"\n" if ndjson else b"data: " + text + b"\n\n"


@st.composite
def stream_bytes(draw: st.DrawFn, ndjson: bool) -> list[bytes]:
    """A body made of well-formed events, junk and fragments, cut at arbitrary points."""
    parts = draw(
        st.lists(
            st.one_of(
                shaped.map(lambda v: _event(v, ndjson)),
                templates.map(lambda v: _event(v, ndjson)),
                json_values.map(lambda v: _event(v, ndjson)),
                st.sampled_from(FRAGMENTS),
                st.binary(max_size=40),
            ),
            max_size=25,
        )
    )
    body = b"".join(parts)
    cuts = sorted(draw(st.lists(st.integers(0, len(body)), max_size=8)))
    chunks, last = [], 0
    for cut in [*cuts, len(body)]:
        chunks.append(body[last:cut])
        last = cut
    return chunks


class _Body:
    def __init__(self, chunks: list[bytes]) -> None:
        self._chunks = chunks
        self.headers: Mapping[str, str] = {}
        self.closed = False

    def iter_bytes(self) -> Iterator[bytes]:
        yield from self._chunks

    def close(self) -> None:
        self.closed = True


def _providers(http: HTTPClient) -> dict[str, HTTPProvider]:  # type: ignore[type-arg]
    return {
        "openai": OpenAIProvider(http, api_key="k", base_url="http://upstream.test/v1"),
        "anthropic": AnthropicProvider(http, api_key="k", base_url="http://upstream.test"),
        "ollama": OllamaProvider(http, host="http://upstream.test"),
    }


PROVIDERS = _providers(HTTPClient(HTTPSettings(http2=False)))


@pytest.mark.parametrize("name", sorted(PROVIDERS))
@FUZZ
@given(data=st.data())
def test_stream_bytes_end_in_a_result_or_a_typed_error(name: str, data: st.DataObject) -> None:
    chunks = data.draw(stream_bytes(ndjson=name == "ollama"))
    body = _Body(chunks)
    stream = PROVIDERS[name].open_response_stream("m", REQUEST, body)  # type: ignore[arg-type]
    try:
        text = "".join(stream)
    except LLMQError as exc:
        assert exc.to_info().type  # typed, and it serializes
    else:
        assert stream.completed and isinstance(text, str)  # only a terminated stream is a success
        stream.to_completion()
    assert body.closed


@pytest.mark.parametrize("name", sorted(PROVIDERS))
@FUZZ
@given(
    body=st.one_of(
        shaped.map(lambda v: json.dumps(v).encode()),
        templates.map(lambda v: json.dumps(v).encode()),
        json_values.map(lambda v: json.dumps(v).encode()),
        st.binary(max_size=200),
    ),
    status=st.sampled_from([200, 200, 200, 400, 401, 404, 408, 413, 429, 500, 503, 529]),
    headers=st.dictionaries(
        st.sampled_from(["retry-after", "retry-after-ms", "x-should-retry", "x-ratelimit-remaining-requests"]),
        st.text(alphabet="0123456789.-abcTZ: ,", max_size=12),
        max_size=3,
    ),
)
def test_whole_bodies_and_error_bodies_end_in_a_result_or_a_typed_error(
    name: str, body: bytes, status: int, headers: dict[str, str]
) -> None:
    def answer(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(status, stream=httpx2.ByteStream(body), headers=headers)

    provider = _providers(HTTPClient(HTTPSettings(http2=False), transport=httpx2.MockTransport(answer)))[name]
    try:
        completion = provider.complete("m", REQUEST)
    except LLMQError as exc:
        assert exc.to_info().type
    else:
        assert status == 200 and isinstance(completion.text, str)

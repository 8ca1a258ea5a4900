"""Bounded input from upstream, against a real misbehaving HTTP server.

An endless line, an endless stream, an endless whole body and a stream that trickles in just
inside the read timeout each end the attempt with a typed error: memory stays bounded (measured
with tracemalloc) and nothing waits forever (the whole-request deadline closes the response).
"""

from __future__ import annotations

import tracemalloc
from collections.abc import Iterator

import pytest

from tests.support.hostile_server import HostileServer
from tests.support.waits import until
from workers.contract import Message, RequestParams
from workers.llm.anthropic import AnthropicProvider
from workers.llm.base import MAX_LINE_BYTES, ChatRequest, Provider, iter_lines
from workers.llm.errors import ProviderTimeoutError, ResponseTooLargeError
from workers.llm.httpclient import HTTPClient, HTTPSettings
from workers.llm.ollama import OllamaProvider
from workers.llm.openai import OpenAIProvider

REQUEST = ChatRequest(messages=[Message(role="user", content="hi")], params=RequestParams(max_tokens=16))


@pytest.fixture(scope="module")
def server() -> Iterator[HostileServer]:
    with HostileServer() as s:
        yield s


def _provider(name: str, url: str, **settings: object) -> Provider:
    http = HTTPClient(HTTPSettings(http2=False, read_timeout=30.0, **settings))  # type: ignore[arg-type]
    if name == "openai":
        return OpenAIProvider(http, api_key="k", base_url=f"{url}/v1")
    if name == "anthropic":
        return AnthropicProvider(http, api_key="k", base_url=url)
    return OllamaProvider(http, host=url)


def _wait_for_hangup(server: HostileServer, before: int) -> None:
    until(lambda: server.hangups() > before, "the upstream connection to be closed", 30, 0.01)


@pytest.mark.parametrize("provider", ["openai", "anthropic", "ollama"])
def test_an_endless_line_ends_the_stream_typed_with_memory_bounded(server: HostileServer, provider: str) -> None:
    server.mode = "endless_line"
    before = server.hangups()
    model = _provider(provider, server.url)
    tracemalloc.start()
    try:
        with pytest.raises(ResponseTooLargeError) as info, model.stream("m", REQUEST) as stream:
            for _ in stream:
                pass
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert info.value.provider == provider and info.value.model == "m"
    assert not info.value.is_retryable and info.value.falls_back
    assert peak < 8 * MAX_LINE_BYTES  # the line cap, not the upstream, bounds what is held
    _wait_for_hangup(server, before)


def test_an_endless_stream_ends_at_the_response_cap(server: HostileServer) -> None:
    server.mode = "endless_stream"
    before = server.hangups()
    model = _provider("openai", server.url, max_response_bytes=2 * 1024 * 1024)
    deltas = 0
    with pytest.raises(ResponseTooLargeError, match="max_response_bytes"), model.stream("m", REQUEST) as stream:
        for _ in stream:
            deltas += 1
    assert deltas > 1000  # it was read as a stream until the cap, not refused up front
    _wait_for_hangup(server, before)


def test_an_endless_whole_body_ends_at_the_response_cap(server: HostileServer) -> None:
    server.mode = "endless_body"
    before = server.hangups()
    model = _provider("openai", server.url, max_response_bytes=1024 * 1024)
    tracemalloc.start()
    try:
        with pytest.raises(ResponseTooLargeError):
            model.complete("m", REQUEST)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 * 1024 * 1024
    _wait_for_hangup(server, before)


@pytest.mark.parametrize("stream", [True, False])
def test_a_trickling_upstream_is_cut_by_the_whole_request_deadline(server: HostileServer, stream: bool) -> None:
    """Each read returns well inside the 30 s read timeout; only the whole-request deadline ends it."""
    server.mode = "trickle"
    before = server.hangups()
    model = _provider("openai", server.url, request_timeout=0.5)
    with pytest.raises(ProviderTimeoutError) as info:
        if stream:
            with model.stream("m", REQUEST) as s:
                for _ in s:
                    pass
        else:
            model.complete("m", REQUEST)
    assert info.value.code == "request_timeout" and info.value.is_retryable
    _wait_for_hangup(server, before)


def test_iter_lines_is_linear_and_bounded_on_a_byte_by_byte_line() -> None:
    line = b"z" * 5000
    chunks = [bytes([b]) for b in line] + [b"\r\nnext\n"]
    assert list(iter_lines(chunks, max_line=8000)) == [line, b"next"]
    with pytest.raises(ResponseTooLargeError):
        list(iter_lines(chunks, max_line=4096))
    # a long line inside one big chunk is caught too, and a final unterminated one
    with pytest.raises(ResponseTooLargeError):
        list(iter_lines([b"a\n" + b"b" * 5000 + b"\nc\n"], max_line=4096))
    assert list(iter_lines([b"a\nb", b"c\r"], max_line=16)) == [b"a", b"bc"]


def test_a_job_against_an_endless_line_ends_with_a_typed_terminal_event(
    server: HostileServer, redis_url: str, client
) -> None:
    from celery.contrib.testing.worker import start_worker

    from workers.runtime.app import close_runner, create_app
    from workers.settings import Settings

    server.mode = "endless_line"
    settings = Settings(redis_url=redis_url, pool="threads", concurrency=2, claim_lease_s=10)
    env = {"OPENAI_BASE_URL": f"{server.url}/v1", "OPENAI_API_KEY": "k"}
    app = create_app(settings, provider_env=env)
    try:
        with start_worker(app, pool="threads", concurrency=2, perform_ping_check=False, shutdown_timeout=10):
            handle = client.submit({"model": "openai:gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})
            events = list(handle.stream(timeout=60))
            result = handle.result(timeout=5)
    finally:
        close_runner(app)
    assert events[-1].type == "error" and result.status == "failed"
    assert result.error is not None and result.error.type == "response_too_large"
    assert [a.error_type for a in result.attempts] == ["response_too_large"]  # not retried

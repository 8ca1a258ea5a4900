"""Our providers against recorded provider traffic (``../shared/conformance``), over real HTTP.

Every transcript and error file is served byte for byte (status, headers, body) by a local
server, read by the real provider through the real HTTP client, and our parse is checked against
every field its sidecar's ``expected`` states. A field no check knows fails the test: a new kind of
expectation must be handled (or listed in ``INFORMATIONAL`` with the reason it is not ours to
check). New files dropped into the folder are picked up without code changes.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from replay_server import ReplayServer, Reply

from workers.contract import Message
from workers.llm._http import HTTPClient, HTTPSettings
from workers.llm.anthropic import AnthropicProvider
from workers.llm.base import ChatRequest, ChatStream, Completion, Provider
from workers.llm.errormap import _timestamp
from workers.llm.errors import (
    AuthenticationError,
    BadRequestError,
    ContentFilteredError,
    ContextLengthExceededError,
    InsufficientQuotaError,
    LLMQError,
    ModelNotFoundError,
    OverloadedError,
    PermissionDeniedError,
    ProviderError,
    RateLimitedError,
    ServerError,
)
from workers.llm.ollama import OllamaProvider
from workers.llm.openai import OpenAIProvider

CONFORMANCE = Path(
    os.environ.get("LLMQ_CONFORMANCE_DIR") or Path(__file__).parents[2].parent / "shared" / "conformance"
)
if not (CONFORMANCE / "transcripts").is_dir() and not (CONFORMANCE / "errors").is_dir():
    pytest.skip(f"conformance folder not found at {CONFORMANCE} (set LLMQ_CONFORMANCE_DIR)", allow_module_level=True)

API_KEY = "sk-llmq-conformance-0123456789abcdef"
ENDPOINTS = {"openai": "/v1/chat/completions", "anthropic": "/v1/messages", "ollama": "/api/chat"}

#: Sidecar fields that describe the recording rather than anything our parse produces.
INFORMATIONAL = {
    "usage_raw": "provider's full usage object; Usage keeps the normalized counts only",
    "n_data_chunks_excluding_done": "wire statistic (events on the wire)",
    "n_lines": "wire statistic (NDJSON lines on the wire)",
    "event_counts": "wire statistic (SSE events by type)",
    "content_block_types": "wire structure; text, tool calls and thinking are checked",
    "thinking_signature_lengths": "signatures are not kept (the contract has no thinking turns)",
    "stop_sequence": "we never send stop sequences",
    "note": "prose",
    "why_not_retryable": "prose; 'retryable' is checked",
    "retry_after_seconds_rule": "prose; 'retry_after_seconds' is checked",
    "retry_after_header": "raw header; the parsed wait is checked as 'retry_after_seconds'",
    "retry_after_ms_header": "raw header; the parsed wait is checked as 'retry_after_seconds'",
    "body_is_json": "property of the recording",
}


@dataclass
class Case:
    provider: str
    name: str
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    expected: dict[str, Any]
    stream: bool
    request_model: str


def _transcripts() -> Iterator[Any]:
    for sidecar in sorted(CONFORMANCE.glob("transcripts/*/*.expected.json")):
        meta = json.loads(sidecar.read_text(encoding="utf-8"))
        summary = (meta.get("request") or {}).get("body_summary") or {}
        case = Case(
            provider=meta["provider"],
            name=sidecar.name.removesuffix(".expected.json"),
            status=meta["response"]["status"],
            headers=[(k, v) for k, v in meta["response"]["headers"]],
            body=(sidecar.parent / meta["body_file"]).read_bytes(),
            expected=meta["expected"],
            stream=meta["kind"] == "stream",
            request_model=summary.get("model") or "test-model",
        )
        yield pytest.param(case, id=f"{case.provider}/{case.name}")


def _error_files() -> Iterator[Any]:
    for path in sorted(CONFORMANCE.glob("errors/*/*.json")):
        meta = json.loads(path.read_text(encoding="utf-8"))
        summary = (meta.get("request") or {}).get("body_summary") or {}
        modes = ("complete",) if meta["response"]["status"] < 300 else ("complete", "stream")
        for mode in modes:
            case = Case(
                provider=meta["provider"],
                name=path.stem,
                status=meta["response"]["status"],
                headers=[(k, v) for k, v in meta["response"]["headers"]],
                body=meta["response"]["body"].encode("utf-8"),
                expected=meta["expected"],
                stream=mode == "stream",
                request_model=summary.get("model") or "test-model",
            )
            yield pytest.param(case, id=f"{case.provider}/{case.name}[{mode}]")


# --- serving -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server() -> Iterator[ReplayServer]:
    with ReplayServer() as srv:
        yield srv


@pytest.fixture(scope="module")
def http() -> Iterator[HTTPClient]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NO_PROXY", "127.0.0.1,localhost")
        client = HTTPClient(HTTPSettings(max_connections=8, connect_timeout=2.0, read_timeout=10.0))
    yield client
    client.close()


def make_provider(name: str, http: HTTPClient, base: str) -> Provider:
    if name == "openai":
        return OpenAIProvider(http, api_key=API_KEY, base_url=f"{base}/v1")
    if name == "anthropic":
        return AnthropicProvider(http, api_key=API_KEY, base_url=base)
    if name == "ollama":
        return OllamaProvider(http, host=base, api_key=API_KEY)
    raise AssertionError(f"no provider for {name!r}")


@dataclass
class Outcome:
    completion: Completion | None
    stream: ChatStream | None
    error: LLMQError | None


def run_case(case: Case, server: ReplayServer, http: HTTPClient) -> Outcome:
    declared = [int(v) for k, v in case.headers if k.lower() == "content-length"]
    assert all(n == len(case.body) for n in declared), f"{case.name}: Content-Length {declared} != {len(case.body)}"
    key = f"{case.provider}-{case.name}-{'s' if case.stream else 'c'}"
    base = server.add(key, Reply(case.status, case.headers, case.body))
    provider = make_provider(case.provider, http, base)
    request = ChatRequest(model=case.request_model, messages=[Message(role="user", content="hi")], max_tokens=64)
    stream: ChatStream | None = None
    try:
        if case.stream:
            stream = provider.stream(request)
            with stream:
                for _ in stream:
                    pass
            outcome = Outcome(stream.to_completion(), stream, None)
        else:
            outcome = Outcome(provider.complete(request), None, None)
    except LLMQError as exc:
        outcome = Outcome(stream.to_completion() if stream else None, stream, exc)
    check_request(case, server.requests[key])
    return outcome


def check_request(case: Case, captured: list[Any]) -> None:
    assert len(captured) == 1, "exactly one upstream request"
    request = captured[0]
    assert (request.method, request.path) == ("POST", ENDPOINTS[case.provider])
    body = json.loads(request.body)
    assert body["model"] == case.request_model
    if case.provider == "openai":
        assert request.headers["authorization"] == f"Bearer {API_KEY}"
        assert body.get("stream", False) is case.stream
        if case.stream:
            assert body["stream_options"] == {"include_usage": True}
    elif case.provider == "anthropic":
        assert request.headers["x-api-key"] == API_KEY
        assert request.headers["anthropic-version"]
        assert body["max_tokens"] == 64
        assert body.get("stream", False) is case.stream
    else:
        assert body["stream"] is case.stream
        assert body["options"]["num_predict"] == 64


def assert_no_key(outcome: Outcome, logs: str) -> None:
    """The API key must not leak into errors, results or logs."""
    texts = [logs]
    if outcome.error is not None:
        texts += [str(outcome.error), repr(outcome.error.args)]
    if outcome.completion is not None:
        texts.append(repr(outcome.completion))
    assert not any(API_KEY in t for t in texts)


# --- expectations: transcripts ---------------------------------------------------------------------

#: Sidecar stop/done reasons -> our normalized finish_reason.
ANTHROPIC_FINISH = {"end_turn": "stop", "max_tokens": "length", "tool_use": "tool_calls", "stop_sequence": "stop"}
IN_STREAM_ERROR_CLASS = {"overloaded_error": OverloadedError, None: ServerError}

Check = Callable[[Any, Outcome, Case], None]


def _c(o: Outcome) -> Completion:
    assert o.completion is not None, f"no parse result (error: {o.error!r})"
    return o.completion


def check_tool_calls(expected: list[dict[str, Any]], o: Outcome, case: Case) -> None:
    calls = _c(o).tool_calls if o.error is None else []
    assert len(calls) == len(expected)
    for call, want in zip(calls, expected, strict=True):
        if want.get("id"):
            assert call.id == want["id"]
        else:
            assert call.id  # synthesized when the wire has none
        assert call.function.name == want["name"]
        parsed = json.loads(call.function.arguments)
        if "arguments" in want:
            assert parsed == want["arguments"]
        if "input" in want:
            assert parsed == want["input"]
        if "arguments_raw" in want:
            assert call.function.arguments == want["arguments_raw"]  # byte-exact
        if "partial_json_concat" in want:
            assert call.function.arguments == (want["partial_json_concat"] or "{}")


def check_usage(expected: dict[str, Any], o: Outcome, case: Case) -> None:
    usage = _c(o).usage
    if case.provider == "openai":
        assert usage is not None
        assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (
            expected["prompt_tokens"],
            expected["completion_tokens"],
            expected["total_tokens"],
        )
        return
    prompt_key, completion_key = (
        ("input_tokens", "output_tokens") if case.provider == "anthropic" else ("prompt_eval_count", "eval_count")
    )
    if expected[prompt_key] is None and expected[completion_key] is None:
        assert usage is None
        return
    assert usage is not None
    assert usage.prompt_tokens == expected[prompt_key]
    assert usage.completion_tokens == expected[completion_key]


def check_usage_normalized(expected: dict[str, Any], o: Outcome, case: Case) -> None:
    usage = _c(o).usage
    prompt, completion = expected["prompt_tokens"], expected["completion_tokens"]
    if prompt is None and completion is None:
        assert usage is None
    elif completion is None:  # only the prompt count is known (error before the final count)
        assert usage is not None and usage.estimated and usage.prompt_tokens == prompt
    else:
        assert usage is not None and not usage.estimated
        assert (usage.prompt_tokens, usage.completion_tokens) == (prompt, completion)


def check_finish_reason(expected: str | None, o: Outcome, case: Case) -> None:
    assert _c(o).finish_reason == expected
    assert _c(o).native_finish_reason == expected


def check_stop_reason(expected: str | None, o: Outcome, case: Case) -> None:
    assert _c(o).native_finish_reason == expected
    assert _c(o).finish_reason == ANTHROPIC_FINISH.get(expected, expected)


def check_done_reason(expected: str | None, o: Outcome, case: Case) -> None:
    c = _c(o)
    assert c.native_finish_reason == expected
    if o.error is not None:
        assert c.finish_reason is None
    elif expected in (None, "stop"):  # Ollama says "stop" (or nothing) after a tool call too
        assert c.finish_reason == ("tool_calls" if c.tool_calls else "stop")
    else:
        assert c.finish_reason == expected


def check_completed(expected: bool, o: Outcome, case: Case) -> None:
    if o.stream is not None:
        assert o.stream.completed is expected
    else:
        assert expected and o.error is None


def check_outcome(expected: str, o: Outcome, case: Case) -> None:
    if expected == "complete":
        assert o.error is None, f"unexpected error {o.error!r}"
        assert o.stream is None or o.stream.completed
    else:
        assert expected == "error" and o.error is not None


def check_stream_error(expected: dict[str, Any], o: Outcome, case: Case) -> None:
    exc = o.error
    assert exc is not None
    assert type(exc) is IN_STREAM_ERROR_CLASS[expected.get("type")]
    assert exc.details and exc.details["in_stream"] is True
    assert exc.is_retryable
    assert exc.message == expected["message"]
    if "type" in expected:
        assert exc.code == expected["type"]
    if "equivalent_http_status" in expected:
        assert exc.status == expected["equivalent_http_status"]


def check_stream_errors(expected: list[Any], o: Outcome, case: Case) -> None:
    assert len(expected) <= 1, "a stream stops at its first error"
    if not expected:
        assert o.error is None
        return
    want = expected[0] if isinstance(expected[0], dict) else {"message": expected[0]}
    assert o.error is not None and o.error.message == want["message"]
    if want.get("type"):
        assert o.error.code == want["type"]


def check_thinking(expected: list[str] | str | None, o: Outcome, case: Case) -> None:
    joined = "".join(expected) if isinstance(expected, list) else expected or ""
    assert _c(o).thinking == joined


TRANSCRIPT_CHECKS: dict[str, Check] = {
    "id": lambda v, o, c: _assert_eq(_c(o).response_id, v),
    "model": lambda v, o, c: _assert_eq(_c(o).response_model, v),
    "text": lambda v, o, c: _assert_eq(_c(o).text, v or ""),
    "text_blocks": lambda v, o, c: _assert_eq(_c(o).text, "".join(v)),
    "refusal": lambda v, o, c: _assert_eq(_c(o).refusal, v),
    "thinking": check_thinking,
    "tool_calls": check_tool_calls,
    "usage": check_usage,
    "usage_normalized": check_usage_normalized,
    "finish_reason": check_finish_reason,
    "stop_reason": check_stop_reason,
    "done_reason": check_done_reason,
    "done": check_completed,
    "message_stop_seen": check_completed,
    "terminated_by_done_sentinel": check_completed,
    "outcome": check_outcome,
    "error": check_stream_error,
    "errors": check_stream_errors,
}


def _assert_eq(got: object, want: object) -> None:
    assert got == want


def check_fields(expected: dict[str, Any], checks: dict[str, Check], o: Outcome, case: Case) -> None:
    unknown = sorted(set(expected) - set(checks) - set(INFORMATIONAL))
    assert not unknown, f"sidecar fields without a check: {unknown} (add a check or an INFORMATIONAL reason)"
    for name, check in checks.items():
        if name in expected:
            try:
                check(expected[name], o, case)
            except AssertionError as exc:
                raise AssertionError(f"expected.{name}: {exc}") from exc


@pytest.mark.parametrize("case", list(_transcripts()))
def test_transcript(case: Case, server: ReplayServer, http: HTTPClient, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    outcome = run_case(case, server, http)
    check_fields(case.expected, TRANSCRIPT_CHECKS, outcome, case)
    assert_no_key(outcome, caplog.text)


# --- expectations: error files ---------------------------------------------------------------------


def expected_error_class(expected: dict[str, Any]) -> type[ProviderError]:
    """The class the issue's error tree prescribes for what the sidecar describes."""
    status, code, kind = expected["http_status"], expected.get("error_code"), expected.get("error_type")
    message = expected.get("message") or expected.get("error_message") or ""
    if status == 429:
        return InsufficientQuotaError if "insufficient_quota" in (code, kind) else RateLimitedError
    if status == 529 or kind == "overloaded_error":
        return OverloadedError
    if status >= 500:
        return ServerError
    classes = {401: AuthenticationError, 403: PermissionDeniedError, 404: ModelNotFoundError}
    if status in classes:
        return classes[status]
    if code == "context_length_exceeded" or "prompt is too long" in message:
        return ContextLengthExceededError
    if code in ("content_filter", "invalid_prompt"):
        return ContentFilteredError
    return BadRequestError


def _ratelimit_expectation(key: str, value: Any, headers: list[tuple[str, str]]) -> tuple[str, float]:
    """A sidecar ratelimit entry as our normalized key and value.

    OpenAI sidecars say ``limit_requests``/``reset_requests_seconds``; Anthropic ones say
    ``requests_limit``/``requests_reset`` (an RFC 3339 time, which we report as seconds from the
    response's ``Date``).
    """
    if key.startswith("reset_") and key.endswith("_seconds"):
        return f"{key[6:-8]}_reset_s", value
    for field_name in ("limit", "remaining"):
        if key.startswith(field_name + "_"):
            return f"{key[len(field_name) + 1 :]}_{field_name}", value
    if key.endswith("_reset"):
        date = next(v for k, v in headers if k.lower() == "date")
        at, origin = _timestamp(value), _timestamp(date)
        assert at is not None and origin is not None
        return f"{key}_s", max(at - origin, 0.0)
    return key, value


def check_ratelimit(expected: dict[str, Any], o: Outcome, case: Case) -> None:
    got = o.error.ratelimit if o.error is not None else _c(o).ratelimit
    assert got is not None
    for key, value in expected.items():
        ours, want = _ratelimit_expectation(key, value, case.headers)
        assert got.get(ours) == pytest.approx(want), f"{key} -> {ours}"


def _exc(o: Outcome) -> LLMQError:
    assert o.error is not None, "expected an error"
    return o.error


def check_http_status(expected: int, o: Outcome, case: Case) -> None:
    if expected < 300:
        assert o.error is None and o.completion is not None
        return
    exc = _exc(o)
    assert exc.status == expected
    assert type(exc) is expected_error_class(case.expected), f"{type(exc).__name__}"
    assert exc.provider == case.provider and exc.model == case.request_model


def check_request_id(expected: str, o: Outcome, case: Case) -> None:
    got = o.error.request_id if o.error is not None else _c(o).request_id
    assert got == expected


ERROR_CHECKS: dict[str, Check] = {
    "http_status": check_http_status,
    "error_type": lambda v, o, c: _assert_eq((_exc(o).details or {}).get("type"), v),
    "error_code": lambda v, o, c: _assert_eq(_exc(o).code, v),
    "error_param": lambda v, o, c: _assert_eq((_exc(o).details or {}).get("param"), v),
    "message": lambda v, o, c: _assert_eq(_exc(o).message, v),
    "error_message": lambda v, o, c: _assert_eq(_exc(o).message, v),
    "retryable": lambda v, o, c: _assert_eq(_exc(o).is_retryable, v),
    "retry_after_seconds": lambda v, o, c: _assert_eq(_exc(o).retry_after, pytest.approx(v)),
    "x_should_retry_header": lambda v, o, c: _assert_eq(_exc(o).should_retry, v == "true"),
    "request_id": check_request_id,
    "ratelimit": check_ratelimit,
    "prompt_tokens_reported": lambda v, o, c: _assert_eq((_exc(o).details or {}).get("prompt_tokens"), v),
    "context_limit_tokens": lambda v, o, c: _assert_eq((_exc(o).details or {}).get("context_limit_tokens"), v),
    "requested_tokens": lambda v, o, c: _assert_eq((_exc(o).details or {}).get("requested_tokens"), v),
}


@pytest.mark.parametrize("case", list(_error_files()))
def test_error_file(case: Case, server: ReplayServer, http: HTTPClient, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    outcome = run_case(case, server, http)
    if case.provider == "anthropic" and "error_type" in case.expected:
        assert _exc(outcome).code == case.expected["error_type"]  # Anthropic has only a type
    check_fields(case.expected, ERROR_CHECKS, outcome, case)
    assert_no_key(outcome, caplog.text)

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
from collections.abc import Callable
from typing import Any

import pytest

from tests.support.conformance_cases import (
    CONFORMANCE,
    Case,
    Outcome,
    assert_no_key,
    error_files,
    run_case,
    transcripts,
)
from tests.support.replay_server import ReplayServer
from workers.contract import Usage
from workers.llm.base import Completion
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
from workers.llm.httpclient import HTTPClient

if not (CONFORMANCE / "transcripts").is_dir() and not (CONFORMANCE / "errors").is_dir():
    _missing = f"conformance folder not found at {CONFORMANCE} (set LLMQ_CONFORMANCE_DIR)"
    if os.environ.get("CI") == "true":  # CI proves the adapters against the recordings or fails
        pytest.fail(_missing, pytrace=False)
    pytest.skip(_missing, allow_module_level=True)

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
    # the providers added later (Azure, Gemini, Bedrock, OpenAI-compatible servers)
    "vendor": "which OpenAI-compatible vendor recorded the file (its name says so too)",
    "sse_comment_lines": "wire statistic (':' comment lines, which are skipped)",
    "provider": "OpenRouter's upstream provider: routing metadata, not part of an answer",
    "thought_part_count": "wire statistic (thought parts); the thinking text is checked",
    "n_chunks": "wire statistic (SSE events on the wire)",
    "sse_line_terminators": "wire statistic (CRLF or LF); both are parsed",
    "unterminated_tail": "wire statistic; a stream that ends inside an event is checked by 'outcome'",
    "finish_message": "Gemini's prose about the finish; the finish reason is checked",
    "safety_ratings": "per-category scores; a block is checked as 'blocked' and 'outcome'",
    "create_time": "Vertex AI's timestamp of the response",
    "role": "always the assistant's",
    "metrics": "Bedrock's own latency measurement",
    "n_frames": "wire statistic (event-stream frames)",
    "events": "wire structure (one entry per frame); text, tool calls, reasoning, usage and errors are checked",
    "every_event_payload_has_p_padding": "property of the recording (the 'p' field is ignored)",
    "extra_top_level_keys": "fields of the response we do not use (trace, performance config)",
    "error_type_header_raw": "raw header; the parsed type is checked as 'error_type'",
    "details_types": "the error's detail messages; those we use (ErrorInfo's reason, RetryInfo) are checked",
    "retry_delay": "raw RetryInfo value; the parsed wait is checked as 'retry_delay_seconds'",
    "content_type_is_event_stream_but_body_is_plain_json": "property of the recording; the body's error is checked",
}


# --- serving -------------------------------------------------------------------------------------


# --- expectations: transcripts ---------------------------------------------------------------------

#: Sidecar stop/done reasons -> our normalized finish_reason.
ANTHROPIC_FINISH = {"end_turn": "stop", "max_tokens": "length", "tool_use": "tool_calls", "stop_sequence": "stop"}
IN_STREAM_ERROR_CLASS = {"overloaded_error": OverloadedError, None: ServerError}

Check = Callable[[Any, Outcome, Case], None]


def _c(o: Outcome) -> Completion:
    """The parse result; for a whole-body call that failed (a Gemini block), what a failed job's
    result carries: no text, no calls, the usage and finish reason the error reports."""
    if o.completion is None and o.error is not None and o.error.details and "usage" in o.error.details:
        counts = o.error.details["usage"]
        return Completion(
            usage=Usage(prompt_tokens=counts["prompt_tokens"], completion_tokens=counts["completion_tokens"]),
            native_finish_reason=o.error.details.get("finish_reason"),
        )
    assert o.completion is not None, f"no parse result (error: {o.error!r})"
    return o.completion


def check_tool_calls(expected: list[dict[str, Any]], o: Outcome, case: Case) -> None:
    calls = _c(o).tool_calls if o.error is None else []
    assert len(calls) == len(expected)
    signed = {b.data for b in _c(o).reasoning_blocks if b.type == "thought_signature"}
    for call, want in zip(calls, expected, strict=True):
        if want.get("id") or want.get("toolUseId"):
            assert call.id == (want.get("id") or want["toolUseId"])
        else:
            assert call.id  # synthesized when the wire has none
        assert call.function.name == want["name"]
        parsed = json.loads(call.function.arguments)
        if "arguments" in want:
            assert parsed == want["arguments"]
        if "input" in want:
            assert parsed == want["input"]
        if "args" in want:  # Gemini: an object on the wire
            assert parsed == want["args"]
        if "input_raw" in want:  # Bedrock: the streamed JSON string, byte-exact
            assert call.function.arguments == (want["input_raw"] or "{}")
        if "has_thought_signature" in want:  # kept, to be sent back on this call's part
            assert (call.id in signed) is want["has_thought_signature"]
        if "arguments_raw" in want:
            assert call.function.arguments == want["arguments_raw"]  # byte-exact
        if "partial_json_concat" in want:
            assert call.function.arguments == (want["partial_json_concat"] or "{}")


def check_usage(expected: dict[str, Any] | None, o: Outcome, case: Case) -> None:
    """The provider's own usage object: counts under its own names."""
    usage = _c(o).usage
    if expected is None:  # no usage on the wire (an Azure stream without include_usage)
        assert usage is None
        return
    if case.provider == "gemini":  # output = candidates + thoughts; missing counts are 0
        assert usage is not None and not usage.estimated
        assert usage.prompt_tokens == expected.get("promptTokenCount", 0)
        assert usage.completion_tokens == expected.get("candidatesTokenCount", 0) + expected.get(
            "thoughtsTokenCount", 0
        )
        assert usage.total_tokens == expected.get("totalTokenCount", 0)
        return
    names = {
        "openai": ("prompt_tokens", "completion_tokens"),
        "openai-compatible": ("prompt_tokens", "completion_tokens"),
        "azure": ("prompt_tokens", "completion_tokens"),
        "anthropic": ("input_tokens", "output_tokens"),
        "bedrock": ("inputTokens", "outputTokens"),
    }
    keys = names.get(case.provider, ("prompt_eval_count", "eval_count"))
    if all(expected[k] is None for k in keys):
        assert usage is None
        return
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens) == tuple(expected[k] for k in keys)
    for total in ("total_tokens", "totalTokens"):
        if total in expected:
            assert usage.total_tokens == expected[total]


def check_usage_normalized(expected: dict[str, Any] | None, o: Outcome, case: Case) -> None:
    usage = _c(o).usage
    if expected is None:
        assert usage is None
        return
    prompt, completion = expected["prompt_tokens"], expected["completion_tokens"]
    if prompt is None and completion is None:
        assert usage is None
    elif completion is None:  # only the prompt count is known (error before the final count)
        assert usage is not None and usage.estimated and usage.prompt_tokens == prompt
    else:
        assert usage is not None and not usage.estimated
        assert (usage.prompt_tokens, usage.completion_tokens) == (prompt, completion)


#: Gemini finish reasons -> ours (there is no tool-call reason: STOP after calls is tool_calls).
GEMINI_FINISH = {"STOP": "stop", "MAX_TOKENS": "length"}


def check_finish_reason(expected: str | None, o: Outcome, case: Case) -> None:
    c = _c(o)
    if case.provider != "gemini":
        assert c.finish_reason == expected
        if "native_finish_reason" not in case.expected:
            assert c.native_finish_reason == expected
        return
    assert c.native_finish_reason == expected
    if expected is not None and expected not in GEMINI_FINISH:  # a filter stop: a typed error
        assert isinstance(o.error, ContentFilteredError) and o.error.code == expected
    elif o.error is None:
        assert c.finish_reason == ("tool_calls" if c.tool_calls else GEMINI_FINISH.get(expected or ""))


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
    elif expected == "blocked":  # Gemini: prompt blocked, or the answer stopped by a filter
        assert isinstance(o.error, ContentFilteredError) and not o.error.is_retryable
    else:
        assert expected == "error" and o.error is not None


#: Bedrock exception frames -> our classes (the same as the exceptions as HTTP errors).
BEDROCK_EXCEPTIONS = {"serviceUnavailableException": ServerError, "throttlingException": RateLimitedError}


def check_stream_error(expected: dict[str, Any], o: Outcome, case: Case) -> None:
    exc = o.error
    assert exc is not None
    assert exc.details and exc.details["in_stream"] is True
    assert exc.message == expected["message"]
    if "exception_type" in expected:  # a Bedrock exception frame
        assert type(exc) is BEDROCK_EXCEPTIONS[expected["exception_type"]]
        assert exc.code == expected["exception_type"] and exc.is_retryable
        return
    # a compatible server states the status the error has outside a stream (Groq's status_code,
    # OpenRouter's integer code): classified as that status would be
    status = expected.get("status_code") or (expected["code"] if isinstance(expected.get("code"), int) else None)
    if status is not None:
        assert exc.status == status
        code = expected.get("code")
        want = {"http_status": status, "error_code": code if isinstance(code, str) else None, "message": exc.message}
        assert type(exc) is expected_error_class(want)
        assert exc.is_retryable is (status >= 500 or status == 429)
        if isinstance(code, str):
            assert exc.code == code
        if expected.get("type"):
            assert (exc.details or {}).get("type") == expected["type"]
        return
    assert type(exc) is IN_STREAM_ERROR_CLASS[expected.get("type")]
    assert exc.is_retryable
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
    if "exception_type" in want:  # Bedrock: {exception_type, payload}
        want = {"message": want["payload"]["message"], "type": want["exception_type"]}
    assert o.error is not None and o.error.message == want["message"]
    if want.get("type"):
        assert o.error.code == want["type"]


def check_thinking(expected: list[str] | str | None, o: Outcome, case: Case) -> None:
    joined = "".join(expected) if isinstance(expected, list) else expected or ""
    assert _c(o).thinking == joined


def _filtered(value: object) -> bool:
    """Whether an Azure filter-results structure says anything was filtered."""
    if isinstance(value, dict):
        return value.get("filtered") is True or any(_filtered(v) for v in value.values())
    if isinstance(value, list):
        return any(_filtered(v) for v in value)
    return False


def check_azure_filter(expected: object, o: Outcome, case: Case) -> None:
    """Azure's filter annotations: nothing filtered -> an ordinary answer; filtered -> our error."""
    if expected is True or expected is False:  # content_filter_results_seen
        return
    if _filtered(expected):
        assert isinstance(o.error, ContentFilteredError) and not o.error.is_retryable
    else:
        assert not isinstance(o.error, ContentFilteredError)
        assert _c(o).finish_reason != "content_filter"


def _signatures(kind: str, measure: Callable[[list[Any]], Any]) -> Check:
    """Reasoning kept to be sent back (Bedrock's thinking blocks with their signatures and its
    redacted blocks, Gemini's thought signatures), each block tagged with its provider."""

    def check(expected: Any, o: Outcome, case: Case) -> None:
        blocks = _c(o).reasoning_blocks
        assert all(b.provider == case.provider for b in blocks)
        found = measure([b for b in blocks if b.type == kind])
        assert found == (expected or ([] if isinstance(found, list) else 0))

    return check


def check_prompt_feedback(expected: dict[str, Any] | None, o: Outcome, case: Case) -> None:
    if expected and expected.get("blockReason"):
        assert isinstance(o.error, ContentFilteredError) and o.error.code == expected["blockReason"]
        if expected.get("blockReasonMessage"):
            assert o.error.message == expected["blockReasonMessage"]
    elif o.error is not None:
        assert not (o.error.details or {}).get("block_reason")


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
    # Azure, Gemini, Bedrock, OpenAI-compatible servers
    "reasoning": check_thinking,
    "native_finish_reason": lambda v, o, c: _assert_eq(_c(o).native_finish_reason, v),
    "x_groq_usage": lambda v, o, c: _assert_eq(
        (_c(o).usage.prompt_tokens, _c(o).usage.completion_tokens),  # type: ignore[union-attr]
        (v["prompt_tokens"], v["completion_tokens"]),
    ),
    "prompt_filter_results": check_azure_filter,
    "content_filter_results": check_azure_filter,
    "content_filter_results_seen": check_azure_filter,
    "response_id": lambda v, o, c: _assert_eq(_c(o).response_id if o.completion is not None else v, v),
    "model_version": lambda v, o, c: _assert_eq(_c(o).response_model if o.completion is not None else v, v),
    "blocked": lambda v, o, c: _assert_eq(isinstance(o.error, ContentFilteredError), v),
    "prompt_feedback": check_prompt_feedback,
    "thoughts_token_count": lambda v, o, c: _assert_eq(_c(o).usage.reasoning_tokens, v or 0),  # type: ignore[union-attr]
    "cached_content_token_count": lambda v, o, c: _assert_eq(_c(o).usage.cached_tokens, v or 0),  # type: ignore[union-attr]
    "thought_signature_count": _signatures("thought_signature", len),
    "reasoning_signature_lengths": _signatures("thinking", lambda bs: [len(b.signature) for b in bs]),
    "redacted_reasoning_blocks": _signatures("redacted_thinking", len),
    "all_frames_crc_valid": lambda v, o, c: _assert_eq(
        v and o.error is not None and "malformed stream data" in o.error.message, False
    ),
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


@pytest.mark.parametrize("case", list(transcripts()))
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
    if expected.get("error_info_reason") == "API_KEY_INVALID":  # Gemini: a 400 with the reason in details
        return AuthenticationError
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


def check_error_code(expected: str | int | None, o: Outcome, case: Case) -> None:
    if isinstance(expected, int):  # Gemini: the HTTP-like number; its status string is the code
        assert _exc(o).status == expected
    else:
        assert _exc(o).code == expected


def check_retry_hint(expected: float | None, o: Outcome, case: Case) -> None:
    """The wait the provider asked for, however it said it (header, reset header, RetryInfo)."""
    if expected is None:
        assert _exc(o).retry_after is None
    else:
        assert _exc(o).retry_after == pytest.approx(expected)


ERROR_CHECKS: dict[str, Check] = {
    "http_status": check_http_status,
    "error_type": lambda v, o, c: _assert_eq((_exc(o).details or {}).get("type"), v),
    "error_code": check_error_code,
    "error_status": lambda v, o, c: _assert_eq(_exc(o).code, v),
    "error_info_reason": lambda v, o, c: _assert_eq((_exc(o).details or {}).get("reason"), v),
    "retry_delay_seconds": check_retry_hint,
    "retry_hint_seconds": check_retry_hint,
    "inner_error_code": lambda v, o, c: _assert_eq((_exc(o).details or {}).get("inner_error_code"), v),
    "content_filter_category_filtered": lambda v, o, c: _assert_eq(
        v in (_exc(o).details or {}).get("filtered_categories", []), True
    ),
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


@pytest.mark.parametrize("case", list(error_files()))
def test_error_file(case: Case, server: ReplayServer, http: HTTPClient, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    outcome = run_case(case, server, http)
    if case.provider == "anthropic" and "error_type" in case.expected:
        assert _exc(outcome).code == case.expected["error_type"]  # Anthropic has only a type
    check_fields(case.expected, ERROR_CHECKS, outcome, case)
    assert_no_key(outcome, caplog.text)
    if outcome.error is not None:
        # what a job's result and events carry: the provider's message minus any key it echoed
        info = outcome.error.to_info()
        assert "***" not in info.message
        if "API key provided" in (case.expected.get("message") or ""):
            assert info.message.startswith("Incorrect API key provided: [redacted]")

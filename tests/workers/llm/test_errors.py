"""The error tree: JSON round-trips (Celery), retryability by type, and the header rules."""

from __future__ import annotations

import inspect
import pickle

import pytest
from celery import Celery
from kombu.utils import json as kombu_json

from workers.contract import redact as pattern_redact
from workers.llm import errors
from workers.llm.errormap import (
    error_for_status,
    error_in_stream,
    parse_duration,
    parse_ratelimit,
    parse_retry_after,
    redact,
)
from workers.llm.errors import (
    AuthenticationError,
    BadRequestError,
    ContentFilteredError,
    ContextLengthExceededError,
    IncompleteStreamError,
    InsufficientQuotaError,
    LLMQError,
    ModelNotFoundError,
    OverloadedError,
    PermissionDeniedError,
    ProviderConnectionError,
    ProviderTimeoutError,
    RateLimitedError,
    ServerError,
)

ALL_ERRORS = sorted(
    (cls for _, cls in inspect.getmembers(errors, inspect.isclass) if issubclass(cls, LLMQError)),
    key=lambda cls: cls.__name__,
)
MESSAGE = "Rate limit reached"
FULL_FIELDS: dict[str, object] = {
    "provider": "openai",
    "model": "gpt-4o",
    "status": 429,
    "code": "rate_limit_exceeded",
    "retry_after": 26.604,
    "request_id": "req_123",
    "should_retry": True,
    "details": {"type": "tokens", "ratelimit": {"tokens_remaining": 652, "tokens_reset_s": 26.604}, "in_stream": True},
}
ATTRS = ("message", "provider", "model", "status", "code", "retry_after", "request_id", "should_retry", "details")


def _same(a: LLMQError, b: LLMQError) -> None:
    assert type(a) is type(b)
    assert [getattr(a, n) for n in ATTRS] == [getattr(b, n) for n in ATTRS]
    assert str(a) == str(b) and a.is_retryable == b.is_retryable


def _full(cls: type[LLMQError]) -> LLMQError:
    return cls(MESSAGE, **FULL_FIELDS)  # type: ignore[arg-type]  # a dict of mixed field types


@pytest.mark.parametrize("cls", ALL_ERRORS, ids=lambda c: c.__name__)
@pytest.mark.parametrize(
    ("message", "fields"),
    [(MESSAGE, FULL_FIELDS), ("only a message", {}), ("", {}), ("some", {"status": 0, "should_retry": False})],
    ids=["full", "message", "empty", "falsy"],
)
def test_args_rebuild_the_exception(cls: type[LLMQError], message: str, fields: dict[str, object]) -> None:
    exc = cls(message, **fields)  # type: ignore[arg-type]
    assert exc.args == (message, fields)  # constructor params == args: (message, the fields set)
    _same(cls(*exc.args), exc)
    _same(pickle.loads(pickle.dumps(exc)), exc)


@pytest.mark.parametrize("cls", ALL_ERRORS, ids=lambda c: c.__name__)
def test_kombu_json_round_trip(cls: type[LLMQError]) -> None:
    exc = _full(cls)
    name, args = kombu_json.loads(kombu_json.dumps((type(exc).__name__, exc.args)))
    _same(getattr(errors, name)(*args), exc)


@pytest.mark.parametrize("cls", ALL_ERRORS, ids=lambda c: c.__name__)
def test_celery_result_backend_round_trip(cls: type[LLMQError]) -> None:
    """What Celery's JSON result backend does with a task's exception, end to end."""
    app = Celery(set_as_current=False)
    app.conf.result_serializer = "json"
    backend = app.backend
    exc = _full(cls)
    stored = kombu_json.loads(kombu_json.dumps(backend.prepare_exception(exc)))
    _same(backend.exception_to_python(stored), exc)


def test_fields_are_keyword_arguments() -> None:
    with pytest.raises(TypeError, match="keyword arguments"):
        errors.ServerError("boom", "openai")  # type: ignore[arg-type]
    keywords_win = errors.ServerError("boom", {"status": 500, "model": "a"}, status=503)
    assert (keywords_win.status, keywords_win.model) == (503, "a")


@pytest.mark.parametrize(
    ("cls", "retryable"),
    [
        (RateLimitedError, True),
        (OverloadedError, True),
        (ServerError, True),
        (ProviderTimeoutError, True),
        (ProviderConnectionError, True),
        (IncompleteStreamError, True),
        (BadRequestError, False),
        (ContextLengthExceededError, False),
        (ContentFilteredError, False),
        (AuthenticationError, False),
        (PermissionDeniedError, False),
        (ModelNotFoundError, False),
        (InsufficientQuotaError, False),
    ],
)
def test_retryability_is_decided_by_type(cls: type[LLMQError], retryable: bool) -> None:
    assert cls("x").is_retryable is retryable
    assert errors.is_retryable(cls("x")) is retryable


@pytest.mark.parametrize(
    ("status", "code", "message", "cls"),
    [
        (429, "rate_limit_exceeded", "Rate limit reached", RateLimitedError),
        (429, "insufficient_quota", "You exceeded your current quota", InsufficientQuotaError),
        (429, None, "please check your plan and billing details", InsufficientQuotaError),
        (529, "overloaded_error", "Overloaded", OverloadedError),
        (500, "api_error", "Internal server error", ServerError),
        (502, None, "<html>Bad gateway</html>", ServerError),
        (408, None, "timeout", ServerError),
        (409, None, "conflict", ServerError),
        (400, "context_length_exceeded", "maximum context length is 4097 tokens", ContextLengthExceededError),
        (
            400,
            "invalid_request_error",
            "prompt is too long: 205351 tokens > 200000 maximum",
            ContextLengthExceededError,
        ),
        (400, "content_filter", "filtered", ContentFilteredError),
        (400, "invalid_prompt", "flagged", ContentFilteredError),
        (400, "invalid_request_error", "Your credit balance is too low", InsufficientQuotaError),
        (402, "billing_error", "pay up", InsufficientQuotaError),
        (400, "unsupported_parameter", "'stop' is not supported", BadRequestError),
        (422, None, "unprocessable", BadRequestError),
        (401, "invalid_api_key", "Incorrect API key", AuthenticationError),
        (403, "permission_error", "no", PermissionDeniedError),
        (404, "model_not_found", "no such model", ModelNotFoundError),
    ],
)
def test_status_and_body_pick_the_class(status: int, code: str | None, message: str, cls: type[LLMQError]) -> None:
    exc = error_for_status(status, {}, provider="p", model="m", message=message, code=code)
    assert type(exc) is cls
    assert (exc.status, exc.code, exc.message, exc.provider, exc.model) == (status, code, message, "p", "m")


@pytest.mark.parametrize(("header", "status", "retryable"), [("true", 400, True), ("false", 500, False)])
def test_x_should_retry_overrides_the_type(header: str, status: int, retryable: bool) -> None:
    exc = error_for_status(status, {"x-should-retry": header}, provider="p", model="m", message="x")
    assert exc.should_retry is retryable and exc.is_retryable is retryable


@pytest.mark.parametrize(
    ("headers", "wait"),
    [
        ({"retry-after-ms": "26604", "retry-after": "27"}, 26.604),
        ({"retry-after": "23"}, 23.0),
        ({"retry-after": "1.5"}, 1.5),
        ({"retry-after": "Fri, 20 Jun 2025 15:12:00 GMT"}, 23.0),  # HTTP date, relative to now
        ({"retry-after": "Fri, 20 Jun 2025 15:11:00 GMT"}, 0.0),  # in the past
        ({"retry-after-ms": "nonsense", "retry-after": "2"}, 2.0),
        ({"retry-after": "soon"}, None),
        ({}, None),
    ],
)
def test_parse_retry_after(headers: dict[str, str], wait: float | None) -> None:
    now = 1750432297.0  # Fri, 20 Jun 2025 15:11:37 GMT
    assert parse_retry_after(headers, now=now) == (None if wait is None else pytest.approx(wait))


@pytest.mark.parametrize(
    ("raw", "seconds"),
    [
        ("6ms", 0.006),
        ("26.604s", 26.604),
        ("1m30s", 90.0),
        ("6m0s", 360.0),
        ("1h", 3600.0),
        ("0s", 0.0),
        ("2", 2.0),
        ("", None),
        ("soon", None),
        ("5x", None),
        ("1m30", None),
    ],
)
def test_parse_duration(raw: str, seconds: float | None) -> None:
    assert parse_duration(raw) == (None if seconds is None else pytest.approx(seconds))


def test_ratelimit_headers_of_both_families() -> None:
    openai = {
        "x-ratelimit-limit-requests": "10000",
        "x-ratelimit-remaining-requests": "9999",
        "x-ratelimit-reset-requests": "6ms",
        "x-ratelimit-limit-tokens": "10000",
        "x-ratelimit-remaining-tokens": "652",
        "x-ratelimit-reset-tokens": "26.604s",
    }
    assert parse_ratelimit(openai) == {
        "requests_limit": 10000,
        "requests_remaining": 9999,
        "requests_reset_s": 0.006,
        "tokens_limit": 10000,
        "tokens_remaining": 652,
        "tokens_reset_s": 26.604,
    }
    anthropic = {
        "Date": "Fri, 20 Jun 2025 15:11:37 GMT",
        "anthropic-ratelimit-input-tokens-limit": "20000",
        "anthropic-ratelimit-input-tokens-remaining": "0",
        "anthropic-ratelimit-input-tokens-reset": "2025-06-20T15:12:00Z",
        "anthropic-ratelimit-requests-reset": "2025-06-20T15:11:30Z",  # already past: 0
        "anthropic-ratelimit-tokens-remaining": "not a number",
    }
    assert parse_ratelimit(anthropic, now=0.0) == {
        "input_tokens_limit": 20000,
        "input_tokens_remaining": 0,
        "input_tokens_reset_s": 23.0,
        "requests_reset_s": 0.0,
    }
    assert parse_ratelimit({"content-type": "application/json"}) is None


def test_a_429_without_retry_after_waits_for_the_exhausted_limit() -> None:
    headers = {
        "date": "Fri, 20 Jun 2025 15:11:37 GMT",
        "anthropic-ratelimit-input-tokens-remaining": "0",
        "anthropic-ratelimit-input-tokens-reset": "2025-06-20T15:12:00Z",
        "anthropic-ratelimit-output-tokens-remaining": "8000",
        "anthropic-ratelimit-output-tokens-reset": "2025-06-20T15:12:30Z",
    }
    exc = error_for_status(429, headers, provider="anthropic", model="m", message="slow down", kind="rate_limit_error")
    assert isinstance(exc, RateLimitedError)
    assert exc.retry_after == pytest.approx(23.0)  # the exhausted input-token limit, not the later one
    assert exc.ratelimit is not None and exc.ratelimit["output_tokens_reset_s"] == pytest.approx(53.0)
    openai = {"x-ratelimit-remaining-tokens": "652", "x-ratelimit-reset-tokens": "26.604s"}
    assert error_for_status(429, openai, provider="o", model="m", message="x").retry_after == pytest.approx(26.604)
    quota = error_for_status(429, openai, provider="o", model="m", message="x", code="insufficient_quota")
    assert quota.retry_after is None  # waiting does not help an exhausted quota


@pytest.mark.parametrize(
    ("kind", "code", "cls", "status"),
    [
        ("overloaded_error", None, OverloadedError, 529),
        ("api_error", None, ServerError, 500),
        ("rate_limit_error", None, RateLimitedError, 429),
        ("tokens", "rate_limit_exceeded", RateLimitedError, 429),
        ("insufficient_quota", "insufficient_quota", InsufficientQuotaError, 429),
        ("invalid_request_error", None, BadRequestError, 400),
        ("invalid_request_error", "context_length_exceeded", ContextLengthExceededError, 400),
        (None, None, ServerError, 500),  # Ollama: {"error": "..."} has no type
    ],
)
def test_in_stream_errors_map_to_the_same_tree(
    kind: str | None, code: str | None, cls: type[LLMQError], status: int
) -> None:
    exc = error_in_stream(provider="p", model="m", message="boom", code=code, kind=kind)
    assert type(exc) is cls and exc.status == status
    assert exc.details is not None and exc.details["in_stream"] is True


def test_context_window_numbers_are_kept() -> None:
    openai = error_for_status(
        400,
        {},
        provider="openai",
        model="m",
        code="context_length_exceeded",
        message="This model's maximum context length is 4097 tokens. However, you requested 4120 tokens "
        "(3120 in the messages, 1000 in the completion).",
    )
    assert openai.details == {
        "context_limit_tokens": 4097,
        "requested_tokens": 4120,
        "prompt_tokens": 3120,
    }
    anthropic = error_for_status(
        400, {}, provider="anthropic", model="m", message="prompt is too long: 205351 tokens > 200000 maximum"
    )
    assert anthropic.details == {"prompt_tokens": 205351, "context_limit_tokens": 200000}


def test_redact() -> None:
    key = "sk-live-abcdef123456"
    assert redact(f"Incorrect API key provided: {key}.", key, None) == "Incorrect API key provided: [redacted]."
    assert redact("nothing here", key) == "nothing here"
    assert redact("a b c", "", None) == "a b c"


@pytest.mark.parametrize(
    ("text", "clean"),
    [
        ("Incorrect API key provided: invalid-*****2345. You can", "Incorrect API key provided: [redacted]. You can"),
        ("Incorrect API key provided: sk-proj-********abcd.", "Incorrect API key provided: [redacted]"),
        ('{"api_key": "abcdef123456"}', '{"api_key": "[redacted]"}'),
        ("Authorization: Bearer abc.def", "Authorization: Bearer [redacted]"),
        ("max_tokens=64 and 3 tokens: ok", "max_tokens=64 and 3 tokens: ok"),
    ],
)
def test_messages_leaving_the_worker_are_scrubbed(text: str, clean: str) -> None:
    assert pattern_redact(text) == clean
    info = AuthenticationError(text, provider="openai", model="gpt-4o", status=401).to_info()
    assert info.message == pattern_redact(text)


@pytest.mark.parametrize(
    ("text", "clean"),
    [
        # the quick pass (ASCII text without any trigger is returned as it is) misses no case
        ("KEY: SK-LIVE-ABCDEF123", "KEY: [redacted]"),
        ("X-API-KEY=abc123", "X-API-KEY=[redacted]"),
        ("authorization: BEARER abc", "authorization: BEARER [redacted]"),
        ("PASSWORD: hunter2!", "PASSWORD: [redacted]"),
        ("Token=t0k3n", "Token=[redacted]"),
        ("masked Pk-abc and rK-def", "masked [redacted] and [redacted]"),
        ("job_1 model=openai:gpt-4o-mini status=succeeded", "job_1 model=openai:gpt-4o-mini status=succeeded"),
        # not ASCII: the pattern alone decides (its case-insensitive match folds more than lower())
        ("ſk-abcdef123 é", "[redacted] é"),
        ("clé=valeur, api_key=abc", "clé=valeur, api_key=[redacted]"),
    ],
)
def test_the_scrubber_catches_every_casing(text: str, clean: str) -> None:
    assert pattern_redact(text) == clean

"""Provider-neutral pieces of error mapping: retry hints from headers, status -> error class.

Each provider parses its own error body into ``(code, type, message)`` and calls
:func:`error_for_status` (HTTP errors) or :func:`error_in_stream` (an error payload inside a 200
stream); the decisions (what is retryable, what falls back) are made here once. The rules follow
the official SDKs: ``x-should-retry`` wins; 408, 409, 429, 5xx, 529 are retryable;
``insufficient_quota`` is not; the wait comes from ``retry-after-ms``, then ``retry-after`` as
seconds, then as an HTTP date, and for a 429 without either, from the rate-limit reset headers.
"""

from __future__ import annotations

import email.utils
import math
import re
import time
from collections.abc import Mapping
from datetime import datetime
from typing import Any

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

__all__ = [
    "error_for_status",
    "error_in_batch",
    "error_in_stream",
    "parse_duration",
    "parse_ratelimit",
    "parse_retry_after",
    "parse_should_retry",
    "redact",
]

_CONTEXT_MARKERS = (
    "context_length_exceeded",
    "context length",
    "prompt is too long",
    "maximum context",
    "too many tokens",
    "exceeds the context window",
    "exceeds the maximum number of tokens",  # Gemini
    "input is too long",  # Bedrock
)
_FILTER_MARKERS = ("content_filter", "content_policy", "invalid_prompt", "flagged", "responsibleaipolicy")
_QUOTA_MARKERS = ("insufficient_quota", "billing", "credit balance")

#: The HTTP status a provider uses for an error ``type``/``code`` outside a stream; an error
#: payload inside a 200 stream is classified as if it had come with that status.
_KIND_STATUS = {
    "invalid_request_error": 400,
    "context_length_exceeded": 400,
    "authentication_error": 401,
    "invalid_api_key": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "model_not_found": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "rate_limit_exceeded": 429,
    "insufficient_quota": 429,
    "api_error": 500,
    "server_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}


def parse_retry_after(headers: Mapping[str, str], *, now: float | None = None) -> float | None:
    """Seconds to wait as the provider asked, or ``None`` when it did not say."""
    raw_ms = headers.get("retry-after-ms")
    if raw_ms:
        try:
            value = float(raw_ms) / 1000.0
        except ValueError:
            value = math.nan
        if math.isfinite(value) and value >= 0:
            return value
    raw = headers.get("retry-after")
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError:
        parsed = email.utils.parsedate_tz(raw)
        if parsed is None:
            return None
        value = email.utils.mktime_tz(parsed) - (time.time() if now is None else now)
    if not math.isfinite(value):
        return None
    return max(value, 0.0)


_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(raw: str | None) -> float | None:
    """Go-style durations in OpenAI's reset headers: ``"6ms"``, ``"26.604s"``, ``"1m30s"``."""
    if not raw:
        return None
    raw = raw.strip()
    try:
        return float(raw)
    except ValueError:
        pass
    total = 0.0
    pos = 0
    for match in _DURATION_PART.finditer(raw):
        if match.start() != pos:
            return None
        pos = match.end()
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
    return round(total, 6) if pos == len(raw) and pos else None


def _timestamp(raw: str) -> float | None:
    """RFC 3339 (Anthropic's reset headers) or an HTTP date, as unix seconds."""
    try:
        return datetime.fromisoformat(raw.strip()).timestamp()
    except ValueError:
        parsed = email.utils.parsedate_tz(raw)
        return None if parsed is None else float(email.utils.mktime_tz(parsed))


def parse_ratelimit(headers: Mapping[str, str], *, now: float | None = None) -> dict[str, float] | None:
    """Rate-limit headers of either family, normalized; ``None`` when there are none.

    OpenAI sends ``x-ratelimit-{limit,remaining,reset}-{requests,tokens}`` with Go-style
    durations as resets; Anthropic sends ``anthropic-ratelimit-{dimension}-{limit,remaining,reset}``
    with RFC 3339 timestamps. Both become ``{dimension}_limit``, ``{dimension}_remaining`` and
    ``{dimension}_reset_s``: seconds until the reset, counted from the response's ``Date`` (so a
    skewed local clock does not matter), never negative.
    """
    out: dict[str, float] = {}
    origin: float | None = None
    for name, value in headers.items():
        name = name.lower()
        if name.startswith("x-ratelimit-"):
            field, _, dim = name[12:].partition("-")
        elif name.startswith("anthropic-ratelimit-"):
            dim, _, field = name[20:].rpartition("-")
        else:
            continue
        dim = dim.replace("-", "_")
        if not dim or field not in ("limit", "remaining", "reset"):
            continue
        if field != "reset":
            try:
                out[f"{dim}_{field}"] = int(value)
            except ValueError:
                continue
            continue
        seconds = parse_duration(value)
        if seconds is None:
            at = _timestamp(value)
            if at is None:
                continue
            if origin is None:
                date = headers.get("date") or headers.get("Date")
                origin = (_timestamp(date) if date else None) or (time.time() if now is None else now)
            seconds = max(round(at - origin, 3), 0.0)
        out[f"{dim}_reset_s"] = seconds
    return out or None


def _wait_from_resets(ratelimit: Mapping[str, float]) -> float | None:
    """For a 429 without Retry-After: when the exhausted limit (else any limit) resets."""
    resets = {key[:-8]: value for key, value in ratelimit.items() if key.endswith("_reset_s")}
    exhausted = [value for dim, value in resets.items() if ratelimit.get(f"{dim}_remaining") == 0]
    candidates = exhausted or list(resets.values())
    return max(candidates) if candidates else None


def parse_should_retry(headers: Mapping[str, str]) -> bool | None:
    value = headers.get("x-should-retry")
    if value == "true":
        return True
    if value == "false":
        return False
    return None


def redact(text: str, *secrets: str | None) -> str:
    """``text`` with every configured secret (an API key) replaced; upstreams echo keys back."""
    for secret in secrets:
        if secret and len(secret) >= 4 and secret in text:
            text = text.replace(secret, "[redacted]")
    return text


_CONTEXT_NUMBERS = (
    # OpenAI: "maximum context length is 4097 tokens. However, you requested 4120 tokens (3120 in
    # the messages, ..." / "... your messages resulted in 4363 tokens"
    (re.compile(r"maximum context length is (\d+)"), "context_limit_tokens"),
    (re.compile(r"you requested (\d+) tokens"), "requested_tokens"),
    (re.compile(r"\((\d+) in the messages"), "prompt_tokens"),
    (re.compile(r"messages resulted in (\d+) tokens"), "prompt_tokens"),
    # Anthropic: "prompt is too long: 205351 tokens > 200000 maximum"
    (re.compile(r"prompt is too long: (\d+) tokens"), "prompt_tokens"),
    (re.compile(r"> (\d+) maximum"), "context_limit_tokens"),
)


def _context_numbers(message: str) -> dict[str, int]:
    """Numbers a context-window error states; best effort, the wording changes between models."""
    found: dict[str, int] = {}
    for pattern, key in _CONTEXT_NUMBERS:
        match = pattern.search(message)
        if match and key not in found:
            found[key] = int(match.group(1))
    return found


def _contains(haystack: str, needles: tuple[str, ...]) -> bool:
    return any(n in haystack for n in needles)


def _error_class(status: int, hints: str, code: str | None, kind: str | None) -> type[ProviderError]:
    if status == 429:
        return InsufficientQuotaError if _contains(hints, _QUOTA_MARKERS) else RateLimitedError
    if status == 529 or "overloaded_error" in (code or "", kind or ""):
        return OverloadedError
    if status >= 500 or status in (408, 409):
        return ServerError
    if status == 401:
        return AuthenticationError
    if status == 403:
        return PermissionDeniedError
    if status == 404:
        return ModelNotFoundError
    if _contains(hints, _CONTEXT_MARKERS):
        return ContextLengthExceededError
    if _contains(hints, _FILTER_MARKERS):
        return ContentFilteredError
    if status == 402 or _contains(hints, _QUOTA_MARKERS):
        return InsufficientQuotaError
    return BadRequestError


def error_for_status(
    status: int,
    headers: Mapping[str, str],
    *,
    provider: str,
    model: str,
    message: str,
    code: str | None = None,
    kind: str | None = None,
    retry_after: float | None = None,
    request_id: str | None = None,
    param: str | None = None,
    in_stream: bool = False,
    now: float | None = None,
    error_class: type[ProviderError] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> LLMQError:
    """Pick the error class for an HTTP error; ``code``/``kind`` are the body's code and type.

    ``error_class`` overrides the guess from status and wording (a provider whose error type is
    authoritative, e.g. Bedrock's ``x-amzn-ErrorType``); ``extra`` adds JSON values to ``details``.
    """
    hints = " ".join(x for x in (code or "", kind or "", message[:300]) if x).lower()
    request_id = request_id or headers.get("x-request-id") or headers.get("request-id")
    should_retry = parse_should_retry(headers)
    if retry_after is None:
        retry_after = parse_retry_after(headers, now=now)
    cls = error_class or _error_class(status, hints, code, kind)
    details: dict[str, Any] = dict(extra or {})
    if kind:
        details["type"] = kind
    if param:
        details["param"] = param
    if in_stream:
        details["in_stream"] = True
    ratelimit = parse_ratelimit(headers, now=now)
    if ratelimit:
        details["ratelimit"] = ratelimit
        if retry_after is None and cls is RateLimitedError:
            retry_after = _wait_from_resets(ratelimit)
    if cls is ContextLengthExceededError:
        details.update(_context_numbers(message))
    return cls(
        message or f"HTTP {status}",
        provider=provider,
        model=model,
        status=status,
        code=code or kind,
        retry_after=retry_after,
        request_id=request_id,
        should_retry=should_retry,
        details=details or None,
    )


def error_in_stream(
    *,
    provider: str,
    model: str,
    message: str,
    code: str | None = None,
    kind: str | None = None,
    request_id: str | None = None,
    status: int | None = None,
) -> LLMQError:
    """An error payload inside a 200 stream, classified like the same error outside a stream.

    Anthropic's in-stream ``overloaded_error`` is an :class:`OverloadedError` (529 semantics),
    so it is retried (before the first delta) instead of surfacing as a success or a bad request.
    An error without a recognised type (Ollama's ``{"error": "..."}``) is a server error. A
    payload that states its HTTP status (Groq's ``status_code``, OpenRouter's integer ``code``)
    is classified by that status.
    """
    if status is None or not 400 <= status < 600:
        status = _KIND_STATUS.get(code or "") or _KIND_STATUS.get(kind or "") or 500
    return error_for_status(
        status,
        {},
        provider=provider,
        model=model,
        message=message,
        code=code,
        kind=kind,
        request_id=request_id,
        in_stream=True,
    )


def error_in_batch(
    *,
    provider: str,
    model: str,
    message: str,
    code: str | None = None,
    kind: str | None = None,
    request_id: str | None = None,
) -> LLMQError:
    """The error a provider batch reports for one of its lines without an HTTP status (Anthropic's
    ``errored`` result), classified like the same error of a live call, by its type or code."""
    status = _KIND_STATUS.get(code or "") or _KIND_STATUS.get(kind or "") or 500
    return error_for_status(
        status,
        {},
        provider=provider,
        model=model,
        message=message,
        code=code,
        kind=kind,
        request_id=request_id,
        extra={"batch": True},
    )

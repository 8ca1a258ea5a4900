"""Provider-neutral pieces of error mapping: retry hints from headers, status -> error class.

Each provider parses its own error body into ``(code, type, message)`` and calls
:func:`error_for_status`; the decisions (what is retryable, what falls back) are made here once.
The rules follow the official SDKs: ``x-should-retry`` wins; 408, 409, 429, 5xx are retryable;
``insufficient_quota`` is not; the wait comes from ``retry-after-ms``, then ``retry-after`` as
seconds, then as an HTTP date.
"""

from __future__ import annotations

import email.utils
import math
import re
import time
from collections.abc import Mapping

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

__all__ = ["error_for_status", "parse_duration", "parse_retry_after", "parse_should_retry"]

_CONTEXT_MARKERS = (
    "context_length_exceeded",
    "context length",
    "prompt is too long",
    "maximum context",
    "too many tokens",
    "exceeds the context window",
)
_FILTER_MARKERS = ("content_filter", "content_policy", "invalid_prompt", "flagged", "responsibleaipolicy")
_QUOTA_MARKERS = ("insufficient_quota", "billing", "credit balance")


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
        number, unit = float(match.group(1)), match.group(2)
        total += number * {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}[unit]
    return total if pos == len(raw) and pos else None


def parse_should_retry(headers: Mapping[str, str]) -> bool | None:
    value = headers.get("x-should-retry")
    if value == "true":
        return True
    if value == "false":
        return False
    return None


def _contains(haystack: str, needles: tuple[str, ...]) -> bool:
    return any(n in haystack for n in needles)


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
) -> LLMQError:
    """Pick the error class for an HTTP error; ``code``/``kind`` are the body's code and type."""
    hints = " ".join(x for x in (code or "", kind or "", message[:300]) if x).lower()
    request_id = headers.get("x-request-id") or headers.get("request-id")
    should_retry = parse_should_retry(headers)
    if retry_after is None:
        retry_after = parse_retry_after(headers)
    cls: type[ProviderError]
    if status == 429:
        cls = InsufficientQuotaError if _contains(hints, _QUOTA_MARKERS) else RateLimitedError
    elif status == 529 or "overloaded_error" in (code or "", kind or ""):
        cls = OverloadedError
    elif status >= 500 or status in (408, 409):
        cls = ServerError
    elif status == 401:
        cls = AuthenticationError
    elif status == 403:
        cls = PermissionDeniedError
    elif status == 404:
        cls = ModelNotFoundError
    elif _contains(hints, _CONTEXT_MARKERS):
        cls = ContextLengthExceededError
    elif _contains(hints, _FILTER_MARKERS):
        cls = ContentFilteredError
    elif status == 402 or _contains(hints, _QUOTA_MARKERS):
        cls = InsufficientQuotaError
    else:
        cls = BadRequestError
    return cls(
        message or f"HTTP {status}", provider, model, status, code or kind, retry_after, request_id, should_retry
    )

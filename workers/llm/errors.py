"""One error tree for everything that can go wrong running a job.

::

    LLMQError
    ├── ProviderError                      (an upstream call failed)
    │   ├── RetryableProviderError         retried by the retry wrapper
    │   │   ├── RateLimitedError           429 (not insufficient_quota); carries the wait
    │   │   ├── OverloadedError            529 / in-stream overloaded_error
    │   │   ├── ServerError                5xx, 408, 409
    │   │   ├── ProviderTimeoutError       connect/read timeout, stall
    │   │   ├── ProviderConnectionError    refused, reset, DNS
    │   │   └── IncompleteStreamError      stream ended without its terminator / malformed
    │   └── (never retried)
    │       ├── BadRequestError            other 4xx
    │       ├── ContextLengthExceededError prompt + max_tokens over the window
    │       ├── ContentFilteredError       provider policy refused the input
    │       ├── AuthenticationError        401
    │       ├── PermissionDeniedError      403
    │       ├── ModelNotFoundError         404 model (falls back)
    │       ├── InsufficientQuotaError     429 insufficient_quota (falls back)
    │       └── FirstTokenTimeoutError     no first token within the TTFT limit (falls back)
    ├── BudgetExceededError                the ledger refused the reservation
    ├── ConfigurationError                 unknown provider/route, missing key, bad config
    ├── JobCancelledError                  a consumer cancelled the job
    ├── RunFencedError                     this run lost the job's claim (another run owns it now)
    ├── DeadlineExceededError              the job's deadline passed
    ├── RequeueLimitError                  re-queued max_requeues times, still could not be sent
    ├── MidStreamError                     failed after deltas were published (never retried)
    ├── InvalidOutputError                 the answer failed response_format after the repair turns
    ├── PreparationError                   pre-count / pricing / request building failed on the input
    ├── InternalError                      an unexpected failure in the worker (a bug)
    ├── AllModelsFailedError               every model in the chain failed
    └── ToolLoopError                      the worker's tool loop ended the job (workers/tools/)
        ├── ToolArgumentsError             a tool got invalid arguments max_invalid times
        ├── MaxTurnsError                  still calling tools after max_turns model turns
        ├── ToolInterruptedError           a non-idempotent call started but was never journaled
        └── UnknownToolError               the job names a tool this worker has not registered

Retryability is a property of the type, except that the provider's ``x-should-retry`` header
overrides it (kept in ``should_retry``). Errors are built with keyword arguments; ``args`` is
``(message, {field: value})`` and the constructor takes that same pair positionally, so
``cls(*exc.args)`` rebuilds it exactly: that is how Celery's JSON serializer round-trips
exceptions. For the same reason ``details`` holds JSON values only (str, int, float, bool, None,
lists and str-keyed dicts of those).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from workers.contract import ErrorInfo, redact

__all__ = [
    "AllModelsFailedError",
    "AuthenticationError",
    "BadRequestError",
    "BudgetBusyError",
    "BudgetExceededError",
    "ConfigurationError",
    "ContentFilteredError",
    "ContextLengthExceededError",
    "DeadlineExceededError",
    "FirstTokenTimeoutError",
    "IncompleteStreamError",
    "InsufficientQuotaError",
    "InternalError",
    "InvalidOutputError",
    "JobCancelledError",
    "LLMQError",
    "MaxTurnsError",
    "MidStreamError",
    "ModelNotFoundError",
    "OverloadedError",
    "PermissionDeniedError",
    "PreparationError",
    "PromptError",
    "ProviderConnectionError",
    "ProviderError",
    "ProviderTimeoutError",
    "RateLimitedError",
    "RequeueLimitError",
    "ResponseTooLargeError",
    "RetryLaterError",
    "RetryableProviderError",
    "RunFencedError",
    "ServerError",
    "ToolArgumentsError",
    "ToolInterruptedError",
    "ToolLoopError",
    "UnknownToolError",
    "error_type_name",
    "is_retryable",
    "must_propagate",
]


#: The fields an error carries besides its message, in ``args[1]`` order.
FIELDS = ("provider", "model", "status", "code", "retry_after", "request_id", "should_retry", "details")


class LLMQError(Exception):
    """Base of every llmqueue error. Build it with keywords::

        ServerError("upstream 503", provider="openai", model="gpt-4o", status=503)

    Fields: ``provider``, ``model``, ``status`` (HTTP; for an error inside a 200 stream, the
    status the provider gives the same error outside a stream), ``code`` (provider error
    code/type), ``retry_after`` (seconds the provider asked us to wait), ``request_id``,
    ``should_retry`` (the ``x-should-retry`` header, if sent), ``details`` (JSON-only extras: the
    provider's error ``type`` and ``param``, ``ratelimit`` hints parsed from the rate-limit
    headers, ``in_stream``, context-window numbers from the message).

    ``args`` is ``(message, fields)`` with ``fields`` the dict of the fields that are set, and the
    constructor takes exactly that pair positionally, so ``cls(*exc.args)`` rebuilds the error
    (what Celery's JSON serializer does; pickle goes through :meth:`__reduce__` the same way).
    """

    retryable: ClassVar[bool] = False
    #: Whether the fallback chain moves on to the next model after this error.
    falls_back: ClassVar[bool] = False
    type_name: ClassVar[str] = "llmq_error"

    def __init__(
        self,
        message: str = "",
        fields: Mapping[str, Any] | None = None,
        /,
        *,
        provider: str | None = None,
        model: str | None = None,
        status: int | None = None,
        code: str | None = None,
        retry_after: float | None = None,
        request_id: str | None = None,
        should_retry: bool | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        if fields is not None and not isinstance(fields, Mapping):
            raise TypeError(f"{type(self).__name__}: pass provider, model, status ... as keyword arguments")
        given: dict[str, Any] = {
            "provider": provider,
            "model": model,
            "status": status,
            "code": code,
            "retry_after": retry_after,
            "request_id": request_id,
            "should_retry": should_retry,
            "details": details,
        }
        merged = {name: given[name] if given[name] is not None else (fields or {}).get(name) for name in FIELDS}
        super().__init__(message, {name: value for name, value in merged.items() if value is not None})
        self.message = message
        self.provider: str | None = merged["provider"]
        self.model: str | None = merged["model"]
        self.status: int | None = merged["status"]
        self.code: str | None = merged["code"]
        self.retry_after: float | None = merged["retry_after"]
        self.request_id: str | None = merged["request_id"]
        self.should_retry: bool | None = merged["should_retry"]
        self.details: dict[str, Any] | None = merged["details"]

    @property
    def ratelimit(self) -> dict[str, float] | None:
        """Normalized rate-limit headers (``requests_remaining``, ``tokens_reset_s`` ...), if sent."""
        return self.details.get("ratelimit") if self.details else None

    def __str__(self) -> str:
        where = f"{self.provider}:{self.model}" if self.provider and self.model else self.provider or ""
        parts = [p for p in (where, f"HTTP {self.status}" if self.status else "", self.code or "") if p]
        return f"{self.message} ({', '.join(parts)})" if parts else self.message

    def __reduce__(self) -> tuple[type[LLMQError], tuple[object, ...]]:
        return (type(self), self.args)

    @property
    def is_retryable(self) -> bool:
        if self.should_retry is not None:
            return self.should_retry
        return self.retryable

    def to_info(self) -> ErrorInfo:
        return ErrorInfo(
            type=self.type_name,
            message=redact(self.message) if self.message else type(self).__name__,
            retryable=self.is_retryable,
            code=self.code,
            status=self.status,
            provider=self.provider,
            model=self.model,
            retry_after_s=self.retry_after,
        )


class ProviderError(LLMQError):
    type_name = "provider_error"


class RetryableProviderError(ProviderError):
    retryable = True
    falls_back = True
    type_name = "retryable_provider_error"


class RateLimitedError(RetryableProviderError):
    type_name = "rate_limited"


class OverloadedError(RetryableProviderError):
    type_name = "overloaded"


class ServerError(RetryableProviderError):
    type_name = "server_error"


class ProviderTimeoutError(RetryableProviderError):
    type_name = "timeout"


class ProviderConnectionError(RetryableProviderError):
    type_name = "connection_error"


class IncompleteStreamError(RetryableProviderError):
    type_name = "incomplete_stream"


class BadRequestError(ProviderError):
    type_name = "bad_request"


class ContextLengthExceededError(BadRequestError):
    falls_back = True  # a model with a larger window may fit
    type_name = "context_length_exceeded"


class ContentFilteredError(BadRequestError):
    type_name = "content_filtered"


class AuthenticationError(ProviderError):
    type_name = "authentication_error"


class PermissionDeniedError(ProviderError):
    type_name = "permission_denied"


class ModelNotFoundError(ProviderError):
    falls_back = True
    type_name = "model_not_found"


class InsufficientQuotaError(ProviderError):
    falls_back = True
    type_name = "insufficient_quota"


class FirstTokenTimeoutError(ProviderError):
    """The model sent no first token within its time-to-first-token limit; we closed the response.

    Not retried (the same model is likely to be as slow again), but the chain falls back.
    """

    falls_back = True
    type_name = "first_token_timeout"


class BudgetExceededError(LLMQError):
    type_name = "budget_exceeded"


class ConfigurationError(LLMQError):
    type_name = "configuration_error"


class JobCancelledError(LLMQError):
    type_name = "cancelled"


class RunFencedError(LLMQError):
    """Control flow: this run no longer holds the job's claim (it was paused or cut off long enough
    for the job to move to another worker). The run stops at once: it publishes nothing more,
    stores no result and charges nothing; the run that holds the claim ends the job."""

    type_name = "fenced"


class DeadlineExceededError(LLMQError):
    type_name = "deadline_exceeded"


class RequeueLimitError(LLMQError):
    """The job was re-queued ``max_requeues`` times (long waits) and still could not be sent."""

    type_name = "requeue_limit"


class MidStreamError(LLMQError):
    """A failure after the first delta was published: terminal, never retried or fallen back."""

    type_name = "mid_stream_error"


class InvalidOutputError(LLMQError):
    """The answer is not valid JSON for the job's ``response_format``, repairs included.

    ``details["errors"]`` lists the validation errors of the last answer; the job's result keeps
    that answer's raw content.
    """

    type_name = "invalid_output"


class AllModelsFailedError(LLMQError):
    type_name = "all_models_failed"


class RetryLaterError(LLMQError):
    """Control flow: the next attempt must wait longer than a worker slot may be held.

    The task re-queues the job with ``retry_after`` as its countdown, keeping its attempt log.
    """

    retryable = True
    type_name = "retry_later"


class ToolLoopError(LLMQError):
    """Base of the errors that end a job from inside the worker's tool loop."""

    type_name = "tool_loop_error"


class ToolArgumentsError(ToolLoopError):
    """The model called one tool with invalid arguments ``max_invalid`` times."""

    type_name = "tool_arguments"


class MaxTurnsError(ToolLoopError):
    """The model still called tools after the job's ``max_turns`` model turns."""

    type_name = "max_turns"


class ToolInterruptedError(ToolLoopError):
    """A call of a non-idempotent tool started in an earlier run that died before journaling it."""

    type_name = "tool_interrupted"


class UnknownToolError(ToolLoopError):
    """The job names a worker tool that is not registered on the worker running it."""

    type_name = "unknown_tool"


def is_retryable(exc: BaseException) -> bool:
    return isinstance(exc, LLMQError) and exc.is_retryable


def error_type_name(exc: BaseException) -> str:
    return exc.type_name if isinstance(exc, LLMQError) else "internal_error"


class PromptError(LLMQError):
    """A published prompt could not be rendered: not published, hash mismatch, sandbox refusal, size cap."""

    type_name = "prompt_error"


class PreparationError(LLMQError):
    """The job could not be prepared for the upstream call: the pre-count, pricing or request
    building failed on its input (including a ``BaseException`` such as a tokenizer panic).
    Terminal and never retried: the same input fails the same way on every model."""

    type_name = "preparation_failed"


class InternalError(LLMQError):
    """An unexpected failure inside the worker (a bug); the job still ends with a terminal event."""

    type_name = "internal_error"


def must_propagate(exc: BaseException) -> bool:
    """True for the ``BaseException`` kinds that stop a process or a greenlet and must never be
    swallowed (``KeyboardInterrupt``, ``SystemExit``, ``GeneratorExit``, gevent's ``GreenletExit``
    and ``Timeout``). Everything else -- a ``pyo3_runtime.PanicException`` from a native library
    included -- ends the job with a typed error instead of killing it silently."""
    if isinstance(exc, KeyboardInterrupt | SystemExit | GeneratorExit):
        return True
    module = type(exc).__module__ or ""
    return module.partition(".")[0] in ("gevent", "greenlet")


class BudgetBusyError(RetryLaterError):
    """The call's worst case fits the budget, but not beside the reservations in flight.

    A hold, not a failure: the fallback chain tries the next model (a cheaper one may fit now),
    and when none can be served the job is re-queued with a short, growing countdown (no worker
    slot held) until those reservations settle -- bounded by its deadline and ``max_requeues``.
    """

    type_name = "budget_wait"


class ResponseTooLargeError(ProviderError):
    """The upstream sent more than we accept: a stream line over the line cap (1 MiB), or a whole
    response over ``max_response_bytes``. The attempt ends at once (memory stays bounded); it is
    not retried (the same upstream would do it again), but another model of the chain may serve."""

    falls_back = True
    type_name = "response_too_large"

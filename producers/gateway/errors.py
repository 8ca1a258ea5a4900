"""Errors in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``, with a status.

Every 4xx/5xx the gateway sends goes through :class:`GatewayError` (or :func:`error_for_job` for
a job that failed on the worker), so the official SDKs map them to their usual exception classes.
Messages are passed through :func:`redact` on the way out: a provider error that quotes a key
(``Incorrect API key provided: sk-...``) or an ``Authorization`` value never reaches a client.
"""

from __future__ import annotations

import math
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Match

from producers.errors import SubmitRefusedError
from producers.watermark import REDIS_FULL_RETRY_AFTER_S, is_out_of_memory
from workers.contract import CompletionResult, ErrorInfo, StreamEvent, redact

__all__ = [
    "GatewayError",
    "error_for_job",
    "error_for_refusal",
    "error_response",
    "feed_error",
    "redact",
    "scrub_event",
    "scrub_info",
    "scrub_result",
]

#: OpenAI's error ``type`` for a status (the SDKs pick the exception class by status).
_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}

#: Worker error types (``ErrorInfo.type``) -> the status the client sees. A provider rejecting *our*
#: credentials is a gateway-side problem (502), never the caller's 401.
_JOB_STATUS = {
    "bad_request": 400,
    "context_length_exceeded": 400,
    "content_filtered": 400,
    "configuration_error": 400,
    "model_not_found": 404,
    "rate_limited": 429,
    "insufficient_quota": 429,
    "budget_exceeded": 429,
    "cancelled": 499,
    "authentication_error": 502,
    "permission_denied": 502,
    "server_error": 502,
    "connection_error": 502,
    "incomplete_stream": 502,
    "mid_stream_error": 502,
    "all_models_failed": 502,
    "overloaded": 503,
    "timeout": 504,
    "deadline_exceeded": 504,
}


class GatewayError(Exception):
    """An HTTP error answered in OpenAI's error shape."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str | None = None,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type or _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": redact(self.message), "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def error_for_job(info: ErrorInfo | None, job_id: str) -> GatewayError:
    """The HTTP error for a job that ended ``failed`` or ``cancelled`` on the worker."""
    if info is None:
        return GatewayError(502, f"job {job_id} failed without an error description", code="job_failed")
    status = _JOB_STATUS.get(info.type, 500 if info.type == "internal_error" else 502)
    kind = {429: "rate_limit_error", 499: "cancelled"}.get(status)
    if info.type == "insufficient_quota" or info.type == "budget_exceeded":
        kind = "insufficient_quota"
    headers = {}
    if info.retry_after_s is not None and status in (429, 503):
        headers["retry-after"] = str(max(1, round(info.retry_after_s)))
    return GatewayError(status, info.message, type=kind, code=info.type, headers=headers)


def feed_error(item: Any) -> GatewayError:
    """A :class:`~producers.gateway.feed.FeedError` as a response: 503, its code, ``Retry-After`` when
    it has one (a job no worker could take: the SDKs wait that long and retry)."""
    headers = {}
    if item.retry_after_s is not None:
        headers["retry-after"] = str(max(1, math.ceil(item.retry_after_s)))
    return GatewayError(503, item.message, code=item.code, headers=headers)


def error_for_refusal(exc: SubmitRefusedError) -> GatewayError:
    """A submit the queue refused for now (Redis full: 503, a quota: 429), with ``Retry-After``
    (whole seconds, at least 1) so the SDKs' own retry waits that long."""
    headers = {}
    if exc.retry_after_s is not None:
        headers["retry-after"] = str(max(1, math.ceil(exc.retry_after_s)))
    return GatewayError(exc.http_status, exc.message, code=exc.code, headers=headers)


async def error_response(request: Request, exc: Exception) -> JSONResponse:
    """Starlette exception handler: routing errors (404/405) and our own, in OpenAI's shape."""
    if isinstance(exc, GatewayError):
        return exc.response()
    if is_out_of_memory(exc):  # a write Redis refused at maxmemory, outside a submit (which says more)
        message = (
            "Redis is full: it refused a write (used memory > maxmemory); retry later, or give Redis "
            "more memory (CONFIG SET maxmemory, ops/redis.conf)"
        )
        headers = {"retry-after": str(max(1, math.ceil(REDIS_FULL_RETRY_AFTER_S)))}
        return GatewayError(503, message, code="redis_full", headers=headers).response()
    # an HTTP error's status; redis-py's errors carry a status_code too, the error's prefix ('OOM', 'READONLY')
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    if status == 404:
        message = f"Unknown request URL: {request.method} {request.url.path}.{unknown_url_hint(request)}"
    elif status == 405:
        message = f"Method {request.method} is not allowed for {request.url.path}."
    else:
        message = "The gateway failed to handle the request."
    return GatewayError(status, message, code="unknown_url" if status == 404 else None).response()


#: What the OpenAI-compatible part of the gateway serves (named when a client asks for something else).
_SERVED = "POST /v1/chat/completions, GET /v1/models and the jobs API under /v1/jobs"


def unknown_url_hint(request: Request) -> str:
    """What the caller probably meant by a URL no route serves: its path with ``/v1`` added or a
    doubled one removed (an SDK's ``base_url`` without or with an extra ``/v1``), else what is served."""
    path = request.url.path
    candidates = [f"/v1{path}"] if not path.startswith("/v1/") else []
    if path.startswith("/v1/v1/"):
        candidates.append(path[3:])
    for candidate in candidates:
        scope = {**request.scope, "path": candidate, "raw_path": candidate.encode()}
        if any(route.matches(scope)[0] is Match.FULL for route in request.app.router.routes):
            base = "without" if len(candidate) > len(path) else "with a doubled"
            return (
                f" Did you mean {request.method} {candidate}? The gateway's API is under /v1: an SDK's base_url "
                f"is http://<host>:<port>/v1 (this one was sent {base} /v1)."
            )
    return f" This gateway serves {_SERVED}." if path.startswith("/v1/") else ""


def scrub_info(info: ErrorInfo | None) -> ErrorInfo | None:
    if info is None:
        return None
    clean = redact(info.message)
    return info if clean == info.message else info.model_copy(update={"message": clean})


def scrub_result(result: CompletionResult | None) -> CompletionResult | None:
    """The result with its error and attempt messages redacted (the content is the model's, left as is)."""
    if result is None:
        return None
    attempts = [
        a.model_copy(update={"message": redact(a.message)}) if a.message and redact(a.message) != a.message else a
        for a in result.attempts
    ]
    info = scrub_info(result.error)
    if info is result.error and all(x is y for x, y in zip(attempts, result.attempts, strict=True)):
        return result
    return result.model_copy(update={"error": info, "attempts": attempts})


def scrub_event(event: StreamEvent) -> StreamEvent:
    """The event with every error message redacted (deltas are returned unchanged)."""
    if event.type == "error":
        return event.model_copy(update={"error": scrub_info(event.error), "result": scrub_result(event.result)})
    if event.type in ("done", "cancelled"):
        return event.model_copy(update={"result": scrub_result(event.result)})
    return event

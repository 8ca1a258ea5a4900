"""The gateway's last-resort exception handler (``producers.gateway.errors.error_response``): every
error leaves in OpenAI's shape. redis-py's errors carry a ``status_code`` of their own (the reply's
prefix: ``'OOM'``, ``'READONLY'``), which the handler took for an HTTP status and crashed on, so a
Redis error reached the client as starlette's plain-text 500."""

from __future__ import annotations

import asyncio
import json

import redis
from starlette.requests import Request

from producers.gateway.errors import error_response


def _request() -> Request:
    scope = {"type": "http", "method": "POST", "path": "/v1/jobs/x/cancel", "headers": [], "query_string": b""}
    return Request(scope)


def _redis_error(cls: type[redis.ResponseError], prefix: str, text: str) -> redis.ResponseError:
    exc = cls(text)
    exc.status_code = prefix  # type: ignore[attr-defined]  # as redis-py's parser sets it
    return exc


def test_a_redis_error_is_a_500_in_openais_shape() -> None:
    exc = _redis_error(redis.ReadOnlyError, "READONLY", "You can't write against a read only replica.")
    response = asyncio.run(error_response(_request(), exc))
    assert response.status_code == 500
    error = json.loads(bytes(response.body))["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["type"] == "server_error"


def test_a_write_redis_refused_at_maxmemory_is_a_503_with_retry_after() -> None:
    exc = _redis_error(redis.OutOfMemoryError, "OOM", "command not allowed when used memory > 'maxmemory'.")
    response = asyncio.run(error_response(_request(), exc))
    assert response.status_code == 503 and int(response.headers["retry-after"]) >= 1
    error = json.loads(bytes(response.body))["error"]
    assert error["code"] == "redis_full" and "maxmemory" in error["message"]

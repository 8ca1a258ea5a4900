"""Request bodies: size-limited while reading, JSON objects only, validation errors as clear 400s.

The limit is enforced on the bytes actually received, so a chunked body or a lying
``Content-Length`` cannot make the gateway buffer more than ``max_body_bytes``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import ValidationError
from starlette.requests import ClientDisconnect, Request

from producers.gateway.errors import GatewayError

__all__ = ["ClientGoneError", "problems_error", "read_json_object", "validation_error"]


class ClientGoneError(Exception):
    """The client disconnected before its request body arrived."""


def _too_large(limit: int) -> GatewayError:
    return GatewayError(
        413,
        f"Request body too large: the limit is {limit} bytes.",
        type="invalid_request_error",
        code="request_too_large",
    )


async def read_json_object(request: Request, limit: int) -> dict[str, Any]:
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > limit:
                raise _too_large(limit)
        except ValueError:
            raise GatewayError(400, "The Content-Length header is not a number.") from None
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise _too_large(limit)
            chunks.append(chunk)
    except ClientDisconnect:
        raise ClientGoneError from None
    raw = b"".join(chunks)
    if not raw.strip():
        raise GatewayError(400, "The request body is empty: send a JSON object.", code="invalid_json")
    try:
        data = json.loads(raw)
    except UnicodeDecodeError:
        raise GatewayError(400, "The request body is not UTF-8 encoded JSON.", code="invalid_json") from None
    except json.JSONDecodeError as exc:
        raise GatewayError(
            400,
            f"We could not parse the JSON body of your request: {exc.msg} at line {exc.lineno} column {exc.colno}.",
            code="invalid_json",
        ) from None
    if not isinstance(data, dict):
        raise GatewayError(400, "The request body must be a JSON object.", code="invalid_json")
    return data


def _loc(loc: Sequence[Any]) -> str:
    return ".".join(str(part) for part in loc) or "body"


def problems_error(errors: Sequence[Mapping[str, Any]], what: str = "request") -> GatewayError:
    """A 400 listing every validation problem; ``param`` is the first problem's location."""
    problems = [f"{_loc(e.get('loc', ()))}: {e.get('msg', 'invalid')}" for e in errors]
    first = _loc(errors[0].get("loc", ())) if errors else None
    return GatewayError(400, f"Invalid {what}: " + "; ".join(problems), param=first, code="invalid_value")


def validation_error(exc: ValidationError, what: str = "request") -> GatewayError:
    return problems_error(exc.errors(include_url=False, include_input=False), what)

"""The browser job view: ``/ui`` serves one HTML page and a small vanilla-JS file, nothing to build.

The page holds no data of its own: it asks for an API token (kept in the tab's ``sessionStorage``)
and reads everything through the ``/v1/`` API with it, so the view shows exactly what that token's
tenant may see. Message text (deltas, the answer, tool arguments) is not shown, and not even
requested (``?text=0``), unless the gateway runs with ``LLMQ_UI_CONTENT=1``.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from producers.gateway.state import gateway_of
from workers.contract import CompletionResult, StreamEvent

__all__ = ["asset", "page", "strip_result_text", "strip_text", "ui_config"]

_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8", ".css": "text/css"}
_ASSETS = ("index.html", "app.js", "app.css")
#: No framing, no inline scripts, no third-party anything: the page only talks to this gateway.
_HEADERS = {
    "content-security-policy": "default-src 'self'; frame-ancestors 'none'; base-uri 'none'",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-cache",
}


def _read(name: str) -> bytes:
    return resources.files("producers.gateway").joinpath("ui", name).read_bytes()


async def page(request: Request) -> Response:
    return Response(_read("index.html"), media_type=_TYPES[".html"], headers=_HEADERS)


async def asset(request: Request) -> Response:
    name: str = request.path_params["name"]
    if name not in _ASSETS:
        return Response(status_code=404)
    return Response(_read(name), media_type=_TYPES["." + name.rsplit(".", 1)[1]], headers=_HEADERS)


async def ui_config(request: Request) -> Response:
    return JSONResponse({"content": gateway_of(request).settings.ui_content}, headers=_HEADERS)


def strip_result_text(result: CompletionResult | None) -> CompletionResult | None:
    """The result without message text: content, tool arguments, reasoning, parsed output, messages."""
    if result is None:
        return None
    calls = [
        c.model_copy(update={"function": c.function.model_copy(update={"arguments": ""})}) for c in result.tool_calls
    ]
    update: dict[str, Any] = {
        "content": "",
        "tool_calls": calls,
        "reasoning_blocks": [],
        "parsed": None,
        "refusal": None,
        "messages": [],
    }
    return result.model_copy(update=update)


def _error_kind(error: str | None) -> str | None:
    """A tool call's error without what the tool said (its output is message text): the part
    before the first colon, e.g. ``ValueError`` of ``ValueError: no such city 'Oslo'``,
    ``invalid arguments``, ``cancelled``; ``timed out after 5 s`` as it is."""
    return error.split(":", 1)[0] if error else error


def strip_text(event: StreamEvent) -> StreamEvent:
    """The event without message text (``?text=0``): a delta keeps its seq, its text is emptied."""
    if event.type == "delta":
        return event.model_copy(update={"text": ""})
    if event.type == "tool_call":
        call = event.tool_call
        return event.model_copy(
            update={
                "tool_call": call.model_copy(update={"function": call.function.model_copy(update={"arguments": ""})})
            }
        )
    if event.type == "tool_result":
        return event.model_copy(update={"preview": "", "error": _error_kind(event.error)})
    if event.type in ("done", "error", "cancelled"):
        return event.model_copy(update={"result": strip_result_text(event.result)})
    return event

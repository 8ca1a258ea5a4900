"""Azure OpenAI chat completions as the simulator speaks it: the OpenAI wire format behind
``/openai/deployments/{deployment}/chat/completions?api-version=...`` (the deployment names the
model) and the v1 path ``/openai/v1/chat/completions`` (the body's ``model`` does).

Azure's differences from OpenAI, reproduced here: the key in an ``api-key`` header (or a bearer
token); a stream whose first chunk has ``choices: []``, an empty ``id``/``model`` and only
``prompt_filter_results``; ``content_filter_results`` on the answer; a 429 whose error ``code`` is
the string ``"429"`` and whose message says how long to wait (with ``retry-after``); errors carry
``apim-request-id``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote

from simulator.protocols.base import ParsedRequest, Reply, RequestError, StreamRenderer, request_id
from simulator.protocols.openai import OpenAIProtocol
from simulator.script import Fault, Script, ToolCall

__all__ = ["AzureProtocol"]

_DEPLOYMENT = re.compile(r"^/openai/deployments/([^/]+)/chat/completions$")
_V1 = "/openai/v1/chat/completions"
#: api-versions before this one refuse ``stream_options`` (and ``max_completion_tokens``).
_STREAM_OPTIONS_SINCE = "2024-09-01"
_DATED = re.compile(r"^\d{4}-\d{2}-\d{2}(-preview)?$")
_SAFE = {"filtered": False, "severity": "safe"}
_FILTERS = {"hate": _SAFE, "self_harm": _SAFE, "sexual": _SAFE, "violence": _SAFE}
_PROMPT_FILTER = (
    b'data: {"choices":[],"created":0,"id":"","model":"","object":"","prompt_filter_results":'
    + json.dumps(
        [
            {
                "prompt_index": 0,
                "content_filter_results": {**_FILTERS, "jailbreak": {"filtered": False, "detected": False}},
            }
        ],
        separators=(",", ":"),
    ).encode()
    + b"}\n\n"
)


class AzureProtocol(OpenAIProtocol):
    name = "azure"
    path = _V1

    def route(self, path: str) -> dict[str, str] | None:
        match = _DEPLOYMENT.match(path)
        return None if match is None else {"deployment": unquote(match.group(1))}

    def check(self, headers: Mapping[str, str]) -> None:
        if not headers.get("api-key") and not headers.get("authorization"):
            raise RequestError(
                "Access denied due to missing subscription key. Make sure to include subscription key when making "
                "requests to an API.",
                status=401,
            )

    def parse_routed(self, payload: dict[str, Any], route: dict[str, str], query: dict[str, str]) -> ParsedRequest:
        version = query.get("api-version")
        if not version:
            raise RequestError("Missing required query parameter: api-version", status=404)
        if not _DATED.match(version):  # "preview"/"latest" belong to the v1 path
            raise RequestError(f"Unsupported api-version {version!r} for a deployment URL", status=404)
        if version < _STREAM_OPTIONS_SINCE and "stream_options" in payload:
            raise RequestError("Unrecognized request argument supplied: stream_options")
        return self.parse({**payload, "model": route["deployment"]})

    def invalid(self, err: RequestError) -> Reply:
        status, headers, body = super().invalid(err)
        return status, [*headers, ("apim-request-id", request_id("azsim-"))], body

    def error(self, fault: Fault, req: ParsedRequest) -> Reply:
        if fault.kind not in ("429", "429ms"):
            status, headers, body = super().error(fault, req)
            return status, [*headers, ("apim-request-id", request_id("azsim-"))], body
        seconds = int(fault.arg if fault.arg is not None else 1) if fault.kind == "429" else 1
        message = (
            "Requests to the ChatCompletions_Create Operation under Azure OpenAI API version 2024-10-21 have "
            f"exceeded token rate limit of your current OpenAI S0 pricing tier. Please retry after {seconds} seconds."
        )
        body = json.dumps({"error": {"code": "429", "message": message}}).encode()
        return 429, [("retry-after", str(seconds)), ("apim-request-id", request_id("azsim-"))], body

    def complete_body(self, req: ParsedRequest, script: Script, usage: bool) -> bytes:
        body = json.loads(super().complete_body(req, script, usage))
        body["prompt_filter_results"] = json.loads(_PROMPT_FILTER[6:])["prompt_filter_results"]
        for choice in body["choices"]:
            choice["content_filter_results"] = _FILTERS
        return json.dumps(body).encode()

    def open_stream(self, req: ParsedRequest, script: Script) -> StreamRenderer:
        return _AzureStream(super().open_stream(req, script))


class _AzureStream(StreamRenderer):
    """The OpenAI stream, after Azure's prompt-filter chunk."""

    __slots__ = ("_inner",)

    def __init__(self, inner: StreamRenderer) -> None:
        self._inner = inner

    def head(self) -> bytes:
        return _PROMPT_FILTER + self._inner.head()

    def token(self, text: str) -> bytes:
        return self._inner.token(text)

    def tool_calls(self, calls: list[ToolCall]) -> bytes:
        return self._inner.tool_calls(calls)

    def tail(self, usage: bool) -> bytes:
        return self._inner.tail(usage)

    def error(self) -> bytes:
        return self._inner.error()

    def malformed(self) -> bytes:
        return self._inner.malformed()

"""OpenAI Chat Completions (``POST /v1/chat/completions``), streamed as SSE.

Wire quirks handled here: usage arrives in a final chunk with ``choices: []`` (only when
``stream_options.include_usage`` is sent, which we always do); ``finish_reason`` may come in a chunk
with an empty delta; a tool call's ``id`` and ``name`` come only in its first fragment, later
fragments carry argument pieces matched by ``index``; refusals arrive in ``delta.refusal``; the
stream is complete only after ``data: [DONE]``; an ``{"error": ...}`` object may arrive mid-stream.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping

from workers.contract import FunctionCall, ToolCall, Usage
from workers.llm._http import HTTPClient, StreamingResponse
from workers.llm.base import (
    ChatRequest,
    ChatStream,
    Completion,
    Provider,
    ToolCallAccumulator,
    iter_lines,
    normalize_arguments,
)
from workers.llm.errormap import error_for_status
from workers.llm.errors import ConfigurationError, IncompleteStreamError, LLMQError

__all__ = ["OpenAIProvider", "openai_error_from_body"]

DEFAULT_BASE_URL = "https://api.openai.com/v1"


def openai_error_from_body(
    status: int, headers: Mapping[str, str], body: bytes, *, provider: str = "openai", model: str = ""
) -> LLMQError:
    message, code, kind = "", None, None
    try:
        payload = json.loads(body)
        error = payload.get("error") if isinstance(payload, dict) else None
        if isinstance(error, dict):
            message = str(error.get("message") or "")
            code = error.get("code") if isinstance(error.get("code"), str) else None
            kind = error.get("type") if isinstance(error.get("type"), str) else None
        elif isinstance(error, str):
            message = error
    except ValueError:
        message = body[:500].decode("utf-8", "replace")
    return error_for_status(status, headers, provider=provider, model=model, message=message, code=code, kind=kind)


def _stream_error(payload: object, provider: str, model: str) -> LLMQError:
    """An ``{"error": ...}`` object inside a 200 stream, mapped onto the same tree."""
    error = payload if isinstance(payload, dict) else {"message": str(payload)}
    code = error.get("code") if isinstance(error.get("code"), str) else None
    kind = error.get("type") if isinstance(error.get("type"), str) else None
    status = 529 if kind == "overloaded_error" else 429 if code == "rate_limit_exceeded" else 500
    return error_for_status(
        status, {}, provider=provider, model=model, message=str(error.get("message") or ""), code=code, kind=kind
    )


class OpenAIProvider(Provider):
    name = "openai"

    def __init__(self, http: HTTPClient, *, api_key: str | None, base_url: str | None = None) -> None:
        self._http = http
        self._api_key = api_key
        self._url = (base_url or DEFAULT_BASE_URL).rstrip("/") + "/chat/completions"
        self._official = base_url is None or base_url.rstrip("/") == DEFAULT_BASE_URL

    @classmethod
    def from_env(cls, http: HTTPClient, env: Mapping[str, str] = os.environ) -> OpenAIProvider:
        return cls(http, api_key=env.get("OPENAI_API_KEY") or None, base_url=env.get("OPENAI_BASE_URL") or None)

    # --- request -----------------------------------------------------------------------------

    def _headers(self, request: ChatRequest) -> dict[str, str]:
        if self._api_key is None and self._official:
            raise ConfigurationError("OPENAI_API_KEY is not set in the worker's environment", self.name, request.model)
        headers = {"content-type": "application/json", "accept": "application/json"}
        if self._api_key:
            headers["authorization"] = f"Bearer {self._api_key}"
        headers.update(request.extra_headers)
        return headers

    @staticmethod
    def build_body(request: ChatRequest, *, stream: bool) -> dict[str, object]:
        body: dict[str, object] = {
            "model": request.model,
            "messages": [m.model_dump(exclude_none=True) for m in request.messages],
            "max_tokens": request.max_tokens,
        }
        if request.temperature is not None:
            body["temperature"] = request.temperature
        if request.tools:
            body["tools"] = [t.model_dump(exclude_none=True) for t in request.tools]
        if stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        return body

    def _mapper(self, model: str):
        def mapper(status: int, headers: Mapping[str, str], body: bytes) -> LLMQError:
            return openai_error_from_body(status, headers, body, provider=self.name, model=model)

        return mapper

    # --- calls -------------------------------------------------------------------------------

    def complete(self, request: ChatRequest) -> Completion:
        headers, content = self._http.post(
            self._url,
            headers=self._headers(request),
            body=json.dumps(self.build_body(request, stream=False)).encode(),
            provider=self.name,
            model=request.model,
            error_mapper=self._mapper(request.model),
        )
        return parse_completion(content, request_id=headers.get("x-request-id"))

    def stream(self, request: ChatRequest) -> OpenAIStream:
        response = self._http.open_stream(
            self._url,
            headers=self._headers(request),
            body=json.dumps(self.build_body(request, stream=True)).encode(),
            provider=self.name,
            model=request.model,
            error_mapper=self._mapper(request.model),
        )
        return OpenAIStream(response, provider=self.name, model=request.model)


def parse_completion(content: bytes, *, request_id: str | None = None) -> Completion:
    payload = json.loads(content)
    choice = (payload.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    usage = payload.get("usage")
    calls = [
        ToolCall(
            id=c.get("id") or f"call_{i}",
            function=FunctionCall(
                name=c["function"]["name"], arguments=normalize_arguments(c["function"].get("arguments"))
            ),
        )
        for i, c in enumerate(message.get("tool_calls") or [])
    ]
    return Completion(
        text=message.get("content") or "",
        tool_calls=calls,
        finish_reason=choice.get("finish_reason"),
        usage=_usage(usage),
        refusal=message.get("refusal"),
        response_model=payload.get("model"),
        request_id=request_id,
    )


def _usage(raw: object) -> Usage | None:
    if not isinstance(raw, dict):
        return None
    return Usage(
        prompt_tokens=int(raw.get("prompt_tokens") or 0), completion_tokens=int(raw.get("completion_tokens") or 0)
    )


class OpenAIStream(ChatStream):
    def __init__(self, response: StreamingResponse, *, provider: str, model: str) -> None:
        super().__init__()
        self._response = response
        self._provider = provider
        self._model = model
        self.request_id = response.headers.get("x-request-id")

    def close(self) -> None:
        self._response.close()

    def __iter__(self) -> Iterator[str]:
        loads = json.loads
        parts = self.text_parts
        tools = ToolCallAccumulator()
        try:
            for line in iter_lines(self._response.iter_bytes()):
                if not line.startswith(b"data:"):
                    continue  # blank separators, comments, event:/id: fields
                data = line[6:] if line.startswith(b"data: ") else line[5:]
                if data == b"[DONE]":
                    self.completed = True
                    break
                try:
                    chunk = loads(data)
                except ValueError:
                    raise IncompleteStreamError(
                        f"malformed stream line: {data[:80]!r}", self._provider, self._model
                    ) from None
                if "error" in chunk:
                    raise _stream_error(chunk["error"], self._provider, self._model)
                choices = chunk.get("choices")
                if choices:
                    choice = choices[0]
                    delta = choice.get("delta")
                    if delta:
                        text = delta.get("content")
                        if text:
                            parts.append(text)
                            yield text
                        calls = delta.get("tool_calls")
                        if calls:
                            for call in calls:
                                index = call.get("index", 0)
                                fn = call.get("function") or {}
                                tools.start(index, call.get("id"), fn.get("name"))
                                args = fn.get("arguments")
                                if args:
                                    tools.add_arguments(index, args)
                        refusal = delta.get("refusal")
                        if refusal:
                            self.refusal = (self.refusal or "") + refusal
                    reason = choice.get("finish_reason")
                    if reason:
                        self.finish_reason = reason
                usage = chunk.get("usage")
                if usage:
                    self.usage = _usage(usage)
                if self.response_model is None:
                    self.response_model = chunk.get("model")
        finally:
            self.close()
        if tools:
            self.tool_calls = tools.build()
        if not self.completed:
            raise IncompleteStreamError("stream ended without [DONE]", self._provider, self._model)

"""OpenAI Chat Completions (``POST /v1/chat/completions``), streamed as SSE.

Wire quirks handled here: usage arrives in a final chunk with ``choices: []`` (only when
``stream_options.include_usage`` is sent, which we always do); ``finish_reason`` may come in a chunk
with an empty delta; a tool call's ``id`` and ``name`` come only in its first fragment, later
fragments carry argument pieces matched by ``index``; refusals arrive in ``delta.refusal``; the
stream is complete only after ``data: [DONE]``; an ``{"error": ...}`` object may arrive mid-stream.
The official API wants ``max_completion_tokens`` (reasoning models reject ``max_tokens``);
compatible servers get the classic ``max_tokens``. With ``logprobs`` each chunk's
``choices[].logprobs.content`` is gathered; with ``n`` > 1 chunks carry any choice's ``index``: the
first answer's deltas are yielded, the others gathered as ``alternatives``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import urlsplit

from workers.contract import Alternative, FunctionCall, TokenLogprob, ToolCall, Usage
from workers.llm.base import (
    ChatRequest,
    Completion,
    ResponseBody,
    ResponseStream,
    ToolCallAccumulator,
    decode_json,
    iter_lines,
    new_call_id,
    normalize_arguments,
    sse_continuation,
    token_logprobs,
)
from workers.llm.errormap import error_for_status, error_in_stream, parse_ratelimit, redact
from workers.llm.errors import ContentFilteredError, LLMQError
from workers.llm.httpclient import HTTPClient
from workers.llm.httpprovider import HTTPProvider

__all__ = ["OpenAIProvider", "OpenAIStream", "content_filtered", "openai_error_from_body", "parse_completion"]

DEFAULT_BASE_URL = "https://api.openai.com/v1"
#: ``gen_ai.provider.name`` of the compatible servers the conventions name, by API host.
GENAI_NAMES = {
    "api.openai.com": "openai",
    "api.groq.com": "groq",
    "api.deepseek.com": "deepseek",
    "api.mistral.ai": "mistral_ai",
    "api.x.ai": "x_ai",
    "api.perplexity.ai": "perplexity",
}


def _str_or_none(value: object) -> str | None:
    return value if isinstance(value, str) else None


def openai_error_from_body(
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    *,
    provider: str = "openai",
    model: str = "",
    secret: str | None = None,
    retry_after: float | None = None,
    extra: Mapping[str, object] | None = None,
    request_id: str | None = None,
) -> LLMQError:
    """``{"error": {"message", "type", "param", "code"}}`` (Azure: ``type`` null) -> our tree."""
    message, code, kind, param = "", None, None, None
    try:
        payload = json.loads(body)
        error = payload.get("error") if isinstance(payload, dict) else None
        if isinstance(error, dict):
            message = str(error.get("message") or "")
            code, kind, param = (_str_or_none(error.get(k)) for k in ("code", "type", "param"))
        elif isinstance(error, str):
            message = error
    except ValueError:
        message = body[:500].decode("utf-8", "replace")
    return error_for_status(
        status,
        headers,
        provider=provider,
        model=model,
        message=redact(message, secret),
        code=code,
        kind=kind,
        param=param,
        retry_after=retry_after,
        extra=extra,
        request_id=request_id,
    )


def _stream_error(payload: object, provider: str, model: str, secret: str | None = None) -> LLMQError:
    """An ``{"error": ...}`` object inside a 200 stream, mapped onto the same tree.

    Compatible servers add the status the same error has outside a stream: Groq as
    ``status_code``, OpenRouter as an integer ``code``.
    """
    error = payload if isinstance(payload, dict) else {"message": str(payload)}
    code = error.get("code")
    status = error.get("status_code")
    if isinstance(code, int) and not isinstance(code, bool):
        status, code = status or code, str(code)
    return error_in_stream(
        provider=provider,
        model=model,
        message=redact(str(error.get("message") or ""), secret),
        code=_str_or_none(code),
        kind=_str_or_none(error.get("type")),
        status=status if isinstance(status, int) and not isinstance(status, bool) else None,
    )


def content_filtered(provider: str, model: str, text: str, request_id: str | None = None) -> LLMQError:
    """``finish_reason: "content_filter"``: the provider's filter stopped the answer (not retried)."""
    return ContentFilteredError(
        "the provider's content filter stopped the answer" + (f" after {len(text)} characters" if text else ""),
        provider=provider,
        model=model,
        code="content_filter",
        request_id=request_id,
    )


class OpenAIProvider(HTTPProvider["OpenAIStream"]):
    """OpenAI itself, or any server that speaks Chat Completions (vLLM, Groq, DeepSeek, ...)."""

    name = "openai"
    key_env = "OPENAI_API_KEY"

    def __init__(
        self,
        http: HTTPClient,
        *,
        api_key: str | None,
        base_url: str | None = None,
        organization: str | None = None,
        project: str | None = None,
        name: str | None = None,
        key_env: str | None = None,
        headers: Mapping[str, str] | None = None,
        timeout_s: float | None = None,
        url: str | None = None,
    ) -> None:
        official = base_url is None or base_url.rstrip("/") == DEFAULT_BASE_URL
        static_headers: dict[str, str] = {}
        if organization:
            static_headers["openai-organization"] = organization
        if project:
            static_headers["openai-project"] = project
        static_headers.update(headers or {})
        super().__init__(
            http,
            url=url or (base_url or DEFAULT_BASE_URL).rstrip("/") + "/chat/completions",
            api_key=api_key,
            key_required=official or key_env is not None,
            static_headers=static_headers,
            name=name,
            key_env=key_env,
            timeout_s=timeout_s,
        )
        self._max_tokens_field = "max_completion_tokens" if official else "max_tokens"
        #: Ask for the usage chunk of a stream (``stream_options``); a server refusing the field
        #: (Azure before 2024-09-01) reports none, and the turn's usage is estimated.
        self._stream_usage = True
        #: The API root (``.../v1``): the Files and Batch APIs live beside Chat Completions.
        self.base_url = (base_url or DEFAULT_BASE_URL).rstrip("/")

    @classmethod
    def from_env(cls, http: HTTPClient, env: Mapping[str, str] = os.environ) -> OpenAIProvider:
        return cls(
            http,
            api_key=env.get("OPENAI_API_KEY") or None,
            base_url=env.get("OPENAI_BASE_URL") or None,
            organization=env.get("OPENAI_ORG_ID") or None,
            project=env.get("OPENAI_PROJECT_ID") or None,
        )

    def build_body(self, model: str, request: ChatRequest, *, stream: bool) -> dict[str, object]:
        body: dict[str, object] = {
            "model": model,
            "messages": [m.model_dump(exclude_none=True, exclude=_NOT_SENT) for m in request.messages],
            self._max_tokens_field: request.params.max_tokens,
        }
        if request.params.temperature is not None:
            body["temperature"] = request.params.temperature
        if request.tools:
            body["tools"] = [t.model_dump(exclude_none=True, exclude={"cache_control"}) for t in request.tools]
        _add_params(body, request)
        if request.service_tier is not None:
            body["service_tier"] = request.service_tier
        if stream:
            body["stream"] = True
            if self._stream_usage:
                body["stream_options"] = {"include_usage": True}
        return body

    def error_from_body(self, status: int, headers: Mapping[str, str], body: bytes, *, model: str) -> LLMQError:
        return openai_error_from_body(status, headers, body, provider=self.name, model=model, secret=self._api_key)

    def parse_completion(
        self, model: str, request: ChatRequest, headers: Mapping[str, str], content: bytes
    ) -> Completion:
        completion = parse_completion(content, request_id=self.request_id(headers))
        completion.ratelimit = parse_ratelimit(headers)
        if completion.finish_reason == "content_filter":
            raise content_filtered(self.name, model, completion.text, completion.request_id)
        return completion

    def request_id(self, headers: Mapping[str, str]) -> str | None:
        return headers.get("x-request-id")

    @property
    def genai_name(self) -> str:
        """``openai`` for OpenAI; a compatible server's vendor when the conventions name it, else
        the provider's configured name."""
        return GENAI_NAMES.get(urlsplit(self._url).hostname or "", self.name)

    def open_response_stream(self, model: str, request: ChatRequest, response: ResponseBody) -> OpenAIStream:
        return OpenAIStream(
            response,
            provider=self.name,
            model=model,
            secret=self._api_key,
            request_id=self.request_id(response.headers),
            answers=request.params.answers,
            logprobs=bool(request.params.logprobs),
        )


#: Message fields OpenAI does not take: Anthropic's thinking blocks and cache breakpoints (OpenAI caches
#: prompt prefixes on its own; ``prompt_cache_key`` is how a caller steers it).
_NOT_SENT: Any = {"reasoning_blocks": True, "cache_control": True, "content": {"__all__": {"cache_control"}}}


def _add_params(body: dict[str, object], request: ChatRequest) -> None:
    """The optional request parameters, in Chat Completions' own shapes (the contract's)."""
    p = request.params
    if p.response_format is not None and p.response_format.type != "text":
        body["response_format"] = p.response_format.model_dump(mode="json", exclude_none=True)
    choice = p.tool_choice
    if choice is not None:
        body["tool_choice"] = choice if isinstance(choice, str) else choice.model_dump(mode="json")
    if p.parallel_tool_calls is not None and request.tools:
        body["parallel_tool_calls"] = p.parallel_tool_calls
    if p.stop:
        body["stop"] = list(p.stop)
    if p.top_p is not None:
        body["top_p"] = p.top_p
    if p.seed is not None:
        body["seed"] = p.seed
    if p.prompt_cache_key is not None:
        body["prompt_cache_key"] = p.prompt_cache_key
    if p.user is not None:
        body["user"] = p.user
    if p.reasoning is not None and p.reasoning.effort is not None:
        body["reasoning_effort"] = p.reasoning.effort
    if p.presence_penalty is not None:
        body["presence_penalty"] = p.presence_penalty
    if p.frequency_penalty is not None:
        body["frequency_penalty"] = p.frequency_penalty
    if p.logit_bias:
        body["logit_bias"] = dict(p.logit_bias)
    if p.logprobs:
        body["logprobs"] = True
        if p.top_logprobs is not None:
            body["top_logprobs"] = p.top_logprobs
    if p.answers > 1:
        body["n"] = p.answers


def parse_logprobs(raw: object) -> list[TokenLogprob]:
    """A choice's ``logprobs.content`` (one entry per token) in the contract's shape."""
    return token_logprobs(raw.get("content") if isinstance(raw, dict) else None)


def parse_completion(content: bytes, *, request_id: str | None = None) -> Completion:
    payload = json.loads(content)  # leading whitespace (OpenRouter) is fine for JSON
    if "error" in payload and not payload.get("choices"):
        raise _stream_error(payload["error"], "openai", str(payload.get("model") or ""))
    choices = sorted(payload.get("choices") or [{}], key=lambda c: c.get("index") or 0)
    choice = choices[0]
    message = choice.get("message") or {}
    calls = [
        ToolCall(
            id=c.get("id") or new_call_id(),
            function=FunctionCall(
                name=c["function"]["name"], arguments=normalize_arguments(c["function"].get("arguments"))
            ),
        )
        for i, c in enumerate(message.get("tool_calls") or [])
    ]
    text, thinking = _content(message.get("content"))
    reasoning = message.get("reasoning_content") or message.get("reasoning")
    if isinstance(reasoning, str):
        thinking += reasoning
    reason = choice.get("finish_reason")
    native = choice.get("native_finish_reason")
    usage = payload.get("usage") or (payload.get("x_groq") or {}).get("usage")
    return Completion(
        text=text,
        tool_calls=calls,
        finish_reason=reason,
        usage=_usage(usage),
        thinking=thinking,
        refusal=message.get("refusal"),
        response_model=payload.get("model"),
        request_id=request_id,
        response_id=payload.get("id"),
        native_finish_reason=native if isinstance(native, str) else reason,
        logprobs=parse_logprobs(choice["logprobs"]) if choice.get("logprobs") else None,
        alternatives=[
            Alternative(
                index=c.get("index") or i,
                content=_content((c.get("message") or {}).get("content"))[0],
                finish_reason=c.get("finish_reason"),
                logprobs=parse_logprobs(c["logprobs"]) if c.get("logprobs") else None,
            )
            for i, c in enumerate(choices[1:], 1)
        ],
    )


def _content(value: object) -> tuple[str, str]:
    """``(text, thinking)`` of a message's ``content``: a string, or (Mistral) a list of typed chunks
    (``text``, and ``thinking`` chunks whose own ``thinking`` is a list of text chunks)."""
    if value is None or isinstance(value, str):
        return value or "", ""
    if not isinstance(value, list):
        raise TypeError(f"content is {type(value).__name__}")
    text: list[str] = []
    thinking: list[str] = []
    for part in value:
        kind = part.get("type")
        if kind == "text":
            text.append(part["text"])
        elif kind == "thinking":
            inner = part.get("thinking")
            if isinstance(inner, str):
                thinking.append(inner)
            else:
                thinking.extend(p["text"] for p in inner or () if p.get("type") == "text")
    return "".join(text), "".join(thinking)


def _usage(raw: object) -> Usage | None:
    """``prompt_tokens`` already includes ``prompt_tokens_details.cached_tokens``."""
    if not isinstance(raw, dict):
        return None
    details = raw.get("prompt_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, dict) else None
    out_details = raw.get("completion_tokens_details")
    reasoning = out_details.get("reasoning_tokens") if isinstance(out_details, dict) else None
    return Usage(
        prompt_tokens=int(raw.get("prompt_tokens") or 0),
        completion_tokens=int(raw.get("completion_tokens") or 0),
        cached_tokens=int(cached or 0),
        reasoning_tokens=int(reasoning or 0),
    )


class OpenAIStream(ResponseStream):
    """Chat Completions SSE: every ``data:`` line is one JSON chunk; ``[DONE]`` ends it.

    Compatible servers add: ``:`` comment lines (OpenRouter's keep-alives, skipped like every
    non-``data:`` line); reasoning text as ``delta.reasoning_content`` (DeepSeek) or
    ``delta.reasoning`` (Groq, OpenRouter), or ``content`` as a list of typed chunks (Mistral):
    kept as thinking, never as text; usage on the finish chunk or in ``x_groq.usage`` (Groq);
    ``native_finish_reason`` (OpenRouter); an ``error`` chunk that also carries the usage.
    """

    def __init__(
        self,
        response: ResponseBody,
        *,
        provider: str,
        model: str,
        secret: str | None = None,
        request_id: str | None = None,
        answers: int = 1,
        logprobs: bool = False,
    ) -> None:
        super().__init__(
            response,
            provider=provider,
            model=model,
            request_id=request_id if request_id is not None else response.headers.get("x-request-id"),
        )
        self._secret = secret
        self.ratelimit = parse_ratelimit(response.headers)
        #: ``n`` > 1: chunks carry any choice's index; only the first choice's deltas are yielded,
        #: the others are gathered (:attr:`alternatives`).
        self._answers = answers
        self._logprobs = logprobs

    def __iter__(self) -> Iterator[str]:
        decode = decode_json
        parts = self.text_parts
        thinking: list[str] = []
        tools = ToolCallAccumulator()
        first = True
        vendor_usage: object = None
        many = self._answers > 1
        others: dict[int, _Choice] = {}
        want_logprobs = self._logprobs
        logprobs: list[TokenLogprob] = []
        try:
            lines = iter_lines(self._begin())
            for line in lines:
                if not line.startswith(b"data:"):
                    continue  # blank separators, comments, event:/id: fields
                data = line[6:] if line.startswith(b"data: ") else line[5:]
                if data == b"[DONE]":
                    self.completed = True
                    self._drain(lines)
                    break
                try:
                    chunk = decode(data.decode())
                except ValueError:
                    data = sse_continuation(data, lines)  # a data field spread over several lines
                    try:
                        chunk = decode(data.decode())
                    except ValueError:
                        raise self._malformed(data) from None
                if "error" in chunk:
                    usage = chunk.get("usage")
                    if usage:
                        self.usage = _usage(usage)
                    error = _stream_error(chunk["error"], self._provider, self._model, self._secret)
                    self._read_to_done(lines)
                    raise error
                if first and chunk.get("id"):  # Azure's first chunk has an empty id and model
                    first = False
                    self.response_id = chunk["id"]
                    self.response_model = chunk.get("model") or None
                choices = chunk.get("choices")
                if choices:
                    choice = choices[0]
                    if many and (len(choices) > 1 or choice.get("index")):
                        choice = _gather(choices, others, want_logprobs)
                    if want_logprobs and choice.get("logprobs"):
                        logprobs += parse_logprobs(choice["logprobs"])
                    delta = choice.get("delta")
                    if delta:
                        text = delta.get("content")
                        if text:
                            if text.__class__ is not str:
                                text, thought = _content(text)
                                if thought:
                                    thinking.append(thought)
                            if text:
                                parts.append(text)
                                yield text
                        if len(delta) > 1 or not text:  # role, tool calls, refusal, reasoning: rare
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
                            thought = delta.get("reasoning_content") or delta.get("reasoning")
                            if thought:
                                thinking.append(_text(thought))
                    reason = choice.get("finish_reason")
                    if reason:
                        self.finish_reason = reason
                        native = choice.get("native_finish_reason")
                        self.native_finish_reason = native if native.__class__ is str else reason
                usage = chunk.get("usage")
                if usage:
                    self.usage = _usage(usage)
                elif "x_groq" in chunk:
                    vendor_usage = chunk["x_groq"].get("usage") or vendor_usage
        except Exception as exc:
            self._raise_failed(exc)
        finally:
            self._response.close()
            if thinking:
                self.thinking = "".join(thinking)
        if tools:
            self.tool_calls = tools.build()
        if want_logprobs:
            self.logprobs = logprobs
        if others:
            self.alternatives = [others[i].alternative(i) for i in sorted(others)]
        if self.usage is None and vendor_usage:
            self.usage = _usage(vendor_usage)
        self._finish("data: [DONE]")
        if self.finish_reason == "content_filter":
            self.completed = False
            raise content_filtered(self._provider, self._model, self.text, self.request_id)

    def _read_to_done(self, lines: Iterator[bytes], limit: int = 8) -> None:
        """After an error chunk: read on to ``[DONE]`` if it follows (OpenRouter sends one), so the
        response ends cleanly and its connection is reused; ``completed`` says whether it came."""
        for i, line in enumerate(lines):
            if line in (b"data: [DONE]", b"data:[DONE]"):
                self.completed = True
                self._drain(lines)
                return
            if i >= limit:
                return


class _Choice:
    """What the chunks of one more choice (``n`` > 1) add up to."""

    __slots__ = ("finish_reason", "logprobs", "text")

    def __init__(self) -> None:
        self.text: list[str] = []
        self.finish_reason: str | None = None
        self.logprobs: list[TokenLogprob] | None = None

    def alternative(self, index: int) -> Alternative:
        return Alternative(
            index=index, content="".join(self.text), finish_reason=self.finish_reason, logprobs=self.logprobs
        )


def _gather(choices: list[Any], others: dict[int, _Choice], logprobs: bool) -> dict[str, Any]:
    """Take the chunk's choices other than the first answer into ``others``; returns the first
    answer's choice (an empty one when the chunk has none)."""
    first: dict[str, Any] = {}
    for choice in choices:
        index = choice.get("index") or 0
        if index.__class__ is not int:
            raise TypeError("a choice's index must be an integer")
        if index == 0:
            first = choice
            continue
        other = others.get(index)
        if other is None:
            other = others[index] = _Choice()
        delta = choice.get("delta") or {}
        text = delta.get("content")
        if text:
            other.text.append(_text(text))
        if choice.get("finish_reason"):
            other.finish_reason = choice["finish_reason"]
        if logprobs and choice.get("logprobs"):
            other.logprobs = (other.logprobs or []) + parse_logprobs(choice["logprobs"])
    return first


def _text(value: object) -> str:
    """A text field of a stream chunk; anything else is a malformed chunk (typed by the read loop)."""
    if value.__class__ is not str:
        raise TypeError(f"expected text, got {type(value).__name__}")
    return value

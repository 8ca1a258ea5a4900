"""Ollama chat (``POST /api/chat``), streamed as NDJSON (one JSON object per line).

Translation: ``max_tokens`` and ``temperature`` go into ``options`` (``num_predict``); tool calls
are sent with their arguments as JSON objects, and a ``tool`` message names its tool
(``tool_name``, looked up from the assistant turn that called it). ``stream`` is always sent
because Ollama streams by default.

Wire quirks handled here: ``done_reason`` before or after ``done`` (parsed as JSON, not by
position) or missing altogether; ``done_reason`` stays ``"stop"`` when the model called a tool
(we report ``tool_calls``, keeping the native value); tool calls arrive whole in one line, with
or without ``id``/``function.index``; thinking text in ``message.thinking``; usage in
``prompt_eval_count``/``eval_count`` of the ``done: true`` line; with ``logprobs`` (and
``top_logprobs``) each line's ``logprobs`` in OpenAI's token shape; errors as ``{"error": "..."}``
(a plain string) both as HTTP bodies and as a line inside a 200 stream. The stream is complete
only after a ``done: true`` line.
"""

from __future__ import annotations

import ipaddress
import json
import os
from collections.abc import Iterator, Mapping
from urllib.parse import urlsplit

from workers.contract import FunctionCall, JsonObjectFormat, JsonSchemaFormat, Message, TokenLogprob, ToolCall, Usage
from workers.llm.base import (
    ChatRequest,
    Completion,
    ResponseBody,
    ResponseStream,
    call_arguments,
    decode_json,
    iter_lines,
    new_call_id,
    normalize_arguments,
    token_logprobs,
    tool_names,
)
from workers.llm.errormap import error_for_status, error_in_stream, redact
from workers.llm.errors import LLMQError
from workers.llm.httpclient import HTTPClient
from workers.llm.httpprovider import HTTPProvider

__all__ = ["OllamaProvider", "OllamaStream", "ollama_error_from_body", "parse_chat_response", "parse_host"]

DEFAULT_PORT = 11434


def parse_host(host: str | None) -> str:
    """``OLLAMA_HOST`` as the official client reads it: ``host[:port]`` with optional scheme/path.

    ``None``/``""`` -> ``http://127.0.0.1:11434``; ``"1.2.3.4"`` -> ``http://1.2.3.4:11434``;
    ``"https://example.com"`` -> ``https://example.com:443``; ``":8080"`` -> ``http://127.0.0.1:8080``.
    """
    host, port = host or "", DEFAULT_PORT
    scheme, _, hostport = host.partition("://")
    if not hostport:
        scheme, hostport = "http", host
    elif scheme == "http":
        port = 80
    elif scheme == "https":
        port = 443
    split = urlsplit(f"{scheme}://{hostport}")
    name = split.hostname or "127.0.0.1"
    port = split.port or port
    try:
        if isinstance(ipaddress.ip_address(name), ipaddress.IPv6Address):
            name = f"[{name}]"
    except ValueError:
        pass
    path = split.path.strip("/")
    return f"{scheme}://{name}:{port}" + (f"/{path}" if path else "")


def ollama_error_from_body(
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    *,
    provider: str = "ollama",
    model: str = "",
    secret: str | None = None,
) -> LLMQError:
    """``{"error": "<message>"}`` -> our tree (the status decides; there is no error code)."""
    try:
        payload = json.loads(body)
        error = payload.get("error") if isinstance(payload, dict) else None
        message = error if isinstance(error, str) else json.dumps(error) if error is not None else ""
    except ValueError:
        message = body[:500].decode("utf-8", "replace")
    return error_for_status(status, headers, provider=provider, model=model, message=redact(message, secret))


def _message(message: Message, names: Mapping[str, str]) -> dict[str, object]:
    out: dict[str, object] = {"role": message.role, "content": message.text}
    images = [part.image_url.info.data for part in message.images]
    if images:
        out["images"] = images  # base64 only (the capability check refused links)
    if message.tool_calls:
        calls = []
        for call in message.tool_calls:
            calls.append({"function": {"name": call.function.name, "arguments": call_arguments(call, "ollama")}})
        out["tool_calls"] = calls
    if message.role == "tool" and message.tool_call_id is not None and message.tool_call_id in names:
        out["tool_name"] = names[message.tool_call_id]
    return out


def build_body(model: str, request: ChatRequest, *, stream: bool) -> dict[str, object]:
    p = request.params
    names = tool_names(request.messages)
    options: dict[str, object] = {"num_predict": p.max_tokens}
    if p.temperature is not None:
        options["temperature"] = p.temperature
    body: dict[str, object] = {
        "model": model,
        "messages": [_message(m, names) for m in request.messages],
        "stream": stream,
        "options": options,
    }
    if request.tools and p.tool_choice != "none":
        body["tools"] = [t.model_dump(exclude_none=True, exclude={"cache_control"}) for t in request.tools]
    if p.stop:
        options["stop"] = list(p.stop)
    if p.top_p is not None:
        options["top_p"] = p.top_p
    if p.seed is not None:
        options["seed"] = p.seed
    if p.presence_penalty is not None:
        options["presence_penalty"] = p.presence_penalty
    if p.frequency_penalty is not None:
        options["frequency_penalty"] = p.frequency_penalty
    fmt = p.response_format
    if isinstance(fmt, JsonSchemaFormat):
        body["format"] = fmt.json_schema.schema_
    elif isinstance(fmt, JsonObjectFormat):
        body["format"] = "json"
    if p.reasoning is not None:
        body["think"] = p.reasoning.effort
    if p.logprobs:
        body["logprobs"] = True
        if p.top_logprobs is not None:
            body["top_logprobs"] = p.top_logprobs
    return body


class OllamaProvider(HTTPProvider["OllamaStream"]):
    name = "ollama"
    stream_media_type = "application/x-ndjson"
    key_env = "OLLAMA_API_KEY"

    def __init__(
        self,
        http: HTTPClient,
        *,
        host: str | None = None,
        api_key: str | None = None,
        name: str | None = None,
        headers: Mapping[str, str] | None = None,
        timeout_s: float | None = None,
    ) -> None:
        #: Only Ollama's cloud (and authenticating proxies) want a key; local servers need none.
        super().__init__(
            http,
            url=parse_host(host) + "/api/chat",
            api_key=api_key,
            static_headers=headers,
            name=name,
            timeout_s=timeout_s,
        )

    @classmethod
    def from_env(cls, http: HTTPClient, env: Mapping[str, str] = os.environ) -> OllamaProvider:
        return cls(http, host=env.get("OLLAMA_HOST") or None, api_key=env.get("OLLAMA_API_KEY") or None)

    @property
    def genai_name(self) -> str:
        return "ollama"

    def build_body(self, model: str, request: ChatRequest, *, stream: bool) -> dict[str, object]:
        return build_body(model, request, stream=stream)

    def error_from_body(self, status: int, headers: Mapping[str, str], body: bytes, *, model: str) -> LLMQError:
        return ollama_error_from_body(status, headers, body, provider=self.name, model=model, secret=self._api_key)

    def parse_completion(
        self, model: str, request: ChatRequest, headers: Mapping[str, str], content: bytes
    ) -> Completion:
        return parse_chat_response(content, provider=self.name, model=model)

    def open_response_stream(self, model: str, request: ChatRequest, response: ResponseBody) -> OllamaStream:
        return OllamaStream(response, provider=self.name, model=model, logprobs=bool(request.params.logprobs))


def _tool_call(raw: Mapping[str, object], position: int) -> ToolCall:
    fn = raw.get("function")
    if not isinstance(fn, dict):
        fn = {}
    call_id = raw.get("id")
    return ToolCall(
        id=call_id if isinstance(call_id, str) and call_id else new_call_id(),
        function=FunctionCall(name=fn.get("name") or "unknown", arguments=normalize_arguments(fn.get("arguments"))),
    )


def _finish(done: Mapping[str, object], has_tool_calls: bool) -> tuple[str, str | None]:
    """``(finish_reason, native done_reason)``; a missing ``done_reason`` counts as a stop."""
    native = done.get("done_reason")
    native = native if isinstance(native, str) else None
    if native in (None, "stop"):
        return ("tool_calls" if has_tool_calls else "stop"), native
    return native, native


def _usage(done: Mapping[str, object]) -> Usage | None:
    prompt, completion = done.get("prompt_eval_count"), done.get("eval_count")
    if prompt is None and completion is None:
        return None
    # Older servers omit prompt_eval_count when the whole prompt came from the cache.
    return Usage(prompt_tokens=_count(prompt), completion_tokens=_count(completion))


def _count(value: object) -> int:
    return int(value) if isinstance(value, int | float | str) and value else 0


def parse_chat_response(content: bytes, *, provider: str = "ollama", model: str = "") -> Completion:
    payload = json.loads(content)
    if "error" in payload and "message" not in payload:
        raise error_in_stream(provider=provider, model=model, message=str(payload["error"]))
    message = payload.get("message") or {}
    calls = [_tool_call(c, i) for i, c in enumerate(message.get("tool_calls") or [])]
    finish, native = _finish(payload, bool(calls))
    return Completion(
        text=message.get("content") or "",
        tool_calls=calls,
        finish_reason=finish,
        usage=_usage(payload),
        thinking=message.get("thinking") or "",
        response_model=payload.get("model"),
        native_finish_reason=native,
        logprobs=token_logprobs(payload["logprobs"]) if "logprobs" in payload else None,
    )


class OllamaStream(ResponseStream):
    """NDJSON: every line is a chat response object; the ``done: true`` line ends it."""

    def __init__(self, response: ResponseBody, *, provider: str, model: str, logprobs: bool = False) -> None:
        super().__init__(response, provider=provider, model=model)
        self._logprobs = logprobs

    def __iter__(self) -> Iterator[str]:
        decode = decode_json
        parts = self.text_parts
        thinking: list[str] = []
        calls: list[ToolCall] = []
        first = True
        want_logprobs = self._logprobs
        logprobs: list[TokenLogprob] = []
        try:
            lines = iter_lines(self._begin())
            for line in lines:
                if not line:
                    continue
                try:
                    obj = decode(line.decode())
                except ValueError:
                    raise self._malformed(line) from None
                if first:
                    first = False
                    self.response_model = obj.get("model")
                message = obj.get("message")
                if message:
                    text = message.get("content")
                    if text:
                        if text.__class__ is not str:
                            raise TypeError(f"message content is {type(text).__name__}")
                        parts.append(text)
                        yield text
                    if len(message) > 2:  # more than role + content: thinking, tool calls
                        if message.get("thinking"):
                            thinking.append(_text(message["thinking"]))
                        for raw in message.get("tool_calls") or ():
                            calls.append(_tool_call(raw, len(calls)))
                elif "error" in obj:
                    raise error_in_stream(provider=self._provider, model=self._model, message=str(obj["error"]))
                if want_logprobs and obj.get("logprobs"):
                    logprobs += token_logprobs(obj["logprobs"])
                if obj.get("done"):
                    self.completed = True
                    self.finish_reason, self.native_finish_reason = _finish(obj, bool(calls))
                    self.usage = _usage(obj)
                    self._drain(lines)
                    break
        except Exception as exc:
            self._raise_failed(exc)
        finally:
            self._response.close()
            if thinking:
                self.thinking = "".join(thinking)
        self.tool_calls = calls
        if want_logprobs:
            self.logprobs = logprobs
        self._finish("a done: true line")


def _text(value: object) -> str:
    """A text field of a stream event; anything else is a malformed event (typed by the read loop)."""
    if value.__class__ is not str:
        raise TypeError(f"expected text, got {type(value).__name__}")
    return value

"""Anthropic Messages (``POST /v1/messages``), streamed as SSE events.

Translation: system messages are lifted out into the top-level ``system``; assistant tool calls
become ``tool_use`` blocks and ``tool`` messages become ``tool_result`` blocks in a user turn
(consecutive same-role turns are merged, as the API wants all results of one assistant turn in
the next user turn); tools are sent with ``input_schema``; ``max_tokens`` is always sent and
``temperature`` is capped at Anthropic's maximum of 1.0.

Wire quirks handled here: the ``data:`` payload carries the event ``type`` (the ``event:`` line is
redundant and skipped); ``ping`` events; padding spaces inside the JSON; ``input_json_delta``
fragments split anywhere, and a tool whose only fragment is ``""`` has input ``{}``;
``thinking_delta``/``signature_delta`` in thinking blocks (kept, with ``redacted_thinking`` blocks, as
``reasoning_blocks`` and sent back first in the assistant turn, as the API requires when a tool loop
continues with thinking on); the final ``output_tokens`` (and, in
newer versions only, ``input_tokens``) arrive in ``message_delta``; ``event: error`` (e.g.
``overloaded_error``) inside a 200 stream; the stream is complete only after ``message_stop``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping

from workers.contract import (
    FunctionCall,
    ImagePart,
    JsonObjectFormat,
    JsonSchemaFormat,
    Message,
    NamedToolChoice,
    ReasoningBlock,
    RequestParams,
    TextPart,
    ToolCall,
    Usage,
)
from workers.contract.capabilities import anthropic_native_structured
from workers.contract.messages import MAX_CACHE_BREAKPOINTS
from workers.contract.params import CacheControl
from workers.llm.base import (
    ChatRequest,
    Completion,
    ResponseBody,
    ResponseStream,
    ToolCallAccumulator,
    call_arguments,
    decode_json,
    iter_lines,
    new_call_id,
    normalize_arguments,
    sse_continuation,
)
from workers.llm.errormap import error_for_status, error_in_stream, parse_ratelimit, redact
from workers.llm.errors import LLMQError
from workers.llm.httpclient import HTTPClient
from workers.llm.httpprovider import HTTPProvider

__all__ = [
    "STRUCTURED_TOOL",
    "AnthropicProvider",
    "AnthropicStream",
    "anthropic_error_from_body",
    "build_body",
    "parse_message",
    "structured_tool",
]

DEFAULT_BASE_URL = "https://api.anthropic.com"
API_VERSION = "2023-06-01"
MAX_TEMPERATURE = 1.0
#: The forced tool that carries a ``response_format`` answer on models without native structured
#: outputs; its input is the answer (reported as the completion's text, never as a tool call).
STRUCTURED_TOOL = "structured_output"

#: Anthropic ``stop_reason`` -> our (OpenAI) ``finish_reason``.
FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}


def anthropic_error_from_body(
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    *,
    provider: str = "anthropic",
    model: str = "",
    secret: str | None = None,
) -> LLMQError:
    """``{"type": "error", "error": {"type", "message"}, "request_id"}`` -> our tree."""
    message, kind, request_id = "", None, None
    try:
        payload = json.loads(body)
        error = payload.get("error") if isinstance(payload, dict) else None
        if isinstance(error, dict):
            message = str(error.get("message") or "")
            kind = error.get("type") if isinstance(error.get("type"), str) else None
        if isinstance(payload, dict) and isinstance(payload.get("request_id"), str):
            request_id = payload["request_id"]
    except ValueError:
        message = body[:500].decode("utf-8", "replace")
    return error_for_status(
        status,
        headers,
        provider=provider,
        model=model,
        message=redact(message, secret),
        kind=kind,
        request_id=headers.get("request-id") or request_id,
    )


def _tool_input(call: ToolCall) -> dict[str, object]:
    return call_arguments(call, "anthropic")


def _blocks(message: Message) -> tuple[str, list[dict[str, object]]]:
    """One contract message as an Anthropic ``(role, content blocks)``, its ``cache_control`` on the
    last block."""
    role, blocks = _plain_blocks(message)
    if message.cache_control is not None and blocks:
        blocks[-1]["cache_control"] = _cache_control(message.cache_control)
    return role, blocks


def _cache_control(mark: CacheControl) -> dict[str, object]:
    """Anthropic's form: ``{"type": "ephemeral"}``, with ``"ttl": "1h"`` only when asked (5m is the default)."""
    return {"type": "ephemeral", "ttl": "1h"} if mark.ttl == "1h" else {"type": "ephemeral"}


def _plain_blocks(message: Message) -> tuple[str, list[dict[str, object]]]:
    if message.role == "tool":
        return "user", [{"type": "tool_result", "tool_use_id": message.tool_call_id, "content": message.text}]
    if message.role == "assistant":
        # thinking blocks first and verbatim: the API checks their signatures
        blocks: list[dict[str, object]] = [
            b.model_dump(exclude_none=True) for b in message.reasoning_blocks or [] if b.provider is None
        ]
        if message.text:
            blocks.append({"type": "text", "text": message.text})
        for call in message.tool_calls or []:
            blocks.append({"type": "tool_use", "id": call.id, "name": call.function.name, "input": _tool_input(call)})
        return "assistant", blocks
    if isinstance(message.content, list):
        return "user", [_part(p) for p in message.content]
    return "user", [{"type": "text", "text": message.content or ""}]


def _part(part: TextPart | ImagePart) -> dict[str, object]:
    block = _plain_part(part)
    if part.cache_control is not None:
        block["cache_control"] = _cache_control(part.cache_control)
    return block


def _plain_part(part: TextPart | ImagePart) -> dict[str, object]:
    if isinstance(part, TextPart):
        return {"type": "text", "text": part.text}
    info = part.image_url.info
    if info.data is not None:
        source: dict[str, object] = {"type": "base64", "media_type": info.media_type, "data": info.data}
    else:
        source = {"type": "url", "url": part.image_url.url}
    return {"type": "image", "source": source}


def structured_tool(model: str, params: RequestParams) -> str | None:
    """The forced tool's name when ``response_format`` goes through a tool call on ``model``, else None."""
    fmt = params.response_format
    if isinstance(fmt, JsonSchemaFormat) and anthropic_native_structured(model):
        return None
    return STRUCTURED_TOOL if isinstance(fmt, JsonObjectFormat | JsonSchemaFormat) else None


def _add_params(body: dict[str, object], model: str, p: RequestParams) -> None:
    existing = body.get("tools")
    tools: list[dict[str, object]] = existing if isinstance(existing, list) else []
    body["tools"] = tools
    choice: dict[str, object] | None = None
    if p.tool_choice == "auto":
        choice = {"type": "auto"}
    elif p.tool_choice == "none":
        choice = {"type": "none"}
    elif p.tool_choice == "required":
        choice = {"type": "any"}
    elif isinstance(p.tool_choice, NamedToolChoice):
        choice = {"type": "tool", "name": p.tool_choice.function.name}
    fmt = p.response_format
    forced = structured_tool(model, p)
    if isinstance(fmt, JsonSchemaFormat) and forced is None:
        body["output_config"] = {"format": {"type": "json_schema", "schema": fmt.json_schema.schema_}}
    elif forced is not None:
        schema = fmt.json_schema.schema_ if isinstance(fmt, JsonSchemaFormat) else {"type": "object"}
        tools.append(
            {
                "name": forced,
                "description": "Give your answer by calling this tool; its input is the answer.",
                "input_schema": schema,
            }
        )
        choice = {"type": "tool", "name": forced}
    if p.parallel_tool_calls is False and tools:
        choice = {**(choice or {"type": "auto"}), "disable_parallel_tool_use": True}
    if choice is not None and (tools or choice["type"] == "none"):
        body["tool_choice"] = choice
    if not tools:
        del body["tools"]
    if p.stop:
        body["stop_sequences"] = list(p.stop)
    if p.top_p is not None:
        body["top_p"] = p.top_p
    if p.user is not None:
        body["metadata"] = {"user_id": p.user}
    if p.reasoning is not None:
        body["thinking"] = {"type": "enabled", "budget_tokens": p.reasoning.anthropic_budget()}


def build_body(model: str, request: ChatRequest, *, stream: bool) -> dict[str, object]:
    system: list[dict[str, object]] = []
    turns: list[dict[str, object]] = []
    for message in request.messages:
        if message.role == "system":
            system += _blocks(message)[1]
            continue
        role, blocks = _blocks(message)
        previous = turns[-1]["content"] if turns and turns[-1]["role"] == role else None
        if isinstance(previous, list):  # consecutive turns of one role merge (Anthropic alternates)
            previous.extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})
    p = request.params
    body: dict[str, object] = {"model": model, "max_tokens": p.max_tokens, "messages": turns}
    if system and any("cache_control" in b for b in system):
        body["system"] = system  # blocks, so each keeps its breakpoint
    elif system:
        body["system"] = "\n\n".join(str(b.get("text", "")) for b in system)
    if p.temperature is not None:
        body["temperature"] = min(p.temperature, MAX_TEMPERATURE)
    if request.tools:
        body["tools"] = [
            {
                "name": t.function.name,
                **({"description": t.function.description} if t.function.description else {}),
                "input_schema": t.function.parameters,
                **({"cache_control": _cache_control(t.cache_control)} if t.cache_control is not None else {}),
            }
            for t in request.tools
        ]
    _add_params(body, model, p)
    if p.prompt_cache == "auto":
        mark_stable_prefix(body)
    if stream:
        body["stream"] = True
    return body


def _marks(body: dict[str, object]) -> list[dict[str, object]]:
    """Every block of ``body`` that may carry a breakpoint, in the order the cache reads them."""
    out: list[dict[str, object]] = []
    tools, system, turns = body.get("tools"), body.get("system"), body.get("messages")
    for group in (tools, system):
        if isinstance(group, list):
            out += [b for b in group if isinstance(b, dict)]
    for turn in turns if isinstance(turns, list) else []:
        content = turn.get("content") if isinstance(turn, dict) else None
        if isinstance(content, list):
            out += [b for b in content if isinstance(b, dict)]
    return out


def mark_stable_prefix(body: dict[str, object]) -> None:
    """``prompt_cache: "auto"``: breakpoints on the longest stable prefix, within Anthropic's four.

    One after the tools and system prompt (the last system block, else the last tool): they are the
    same on every turn of a job and across jobs sharing them. One on the last block of the last
    message: the conversation so far, which the next turn of a tool loop (or a follow-up job)
    resends and reads from the cache, paying the write premium only for what it adds. Breakpoints
    the caller set stay; none is added past four. An added breakpoint is 5 minutes, or an hour when
    a caller's 1-hour breakpoint comes after it (Anthropic refuses a 1h after a 5m). Prefixes under
    the model's minimum (1,024 tokens, 2,048 for Haiku) are simply not cached by Anthropic.
    """
    taken = sum(1 for b in _marks(body) if "cache_control" in b)
    system = body.get("system")
    if isinstance(system, str) and system:
        body["system"] = system = [{"type": "text", "text": system}]
    tools = body.get("tools")
    stable = system if isinstance(system, list) and system else tools if isinstance(tools, list) and tools else None
    wanted: list[dict[str, object]] = []
    if isinstance(stable, list) and isinstance(stable[-1], dict):
        wanted.append(stable[-1])
    turns = body.get("messages")
    if isinstance(turns, list) and turns:
        content = turns[-1].get("content") if isinstance(turns[-1], dict) else None
        if isinstance(content, list) and content and isinstance(content[-1], dict):
            wanted.append(content[-1])
    order = _marks(body)
    for block in wanted:
        if "cache_control" not in block and taken < MAX_CACHE_BREAKPOINTS:
            # TTLs must not grow along the prompt: before a caller's 1-hour breakpoint, an hour too
            later = order[next(i for i, b in enumerate(order) if b is block) + 1 :]
            long = any(isinstance(m := b.get("cache_control"), dict) and m.get("ttl") == "1h" for b in later)
            block["cache_control"] = {"type": "ephemeral", "ttl": "1h"} if long else {"type": "ephemeral"}
            taken += 1


class AnthropicProvider(HTTPProvider["AnthropicStream"]):
    name = "anthropic"
    key_env = "ANTHROPIC_API_KEY"

    def __init__(
        self,
        http: HTTPClient,
        *,
        api_key: str | None,
        base_url: str | None = None,
        name: str | None = None,
        key_env: str | None = None,
        headers: Mapping[str, str] | None = None,
        timeout_s: float | None = None,
    ) -> None:
        super().__init__(
            http,
            url=(base_url or DEFAULT_BASE_URL).rstrip("/") + "/v1/messages",
            api_key=api_key,
            key_required=base_url is None or base_url.rstrip("/") == DEFAULT_BASE_URL or key_env is not None,
            static_headers={"anthropic-version": API_VERSION, **(headers or {})},
            name=name,
            key_env=key_env,
            timeout_s=timeout_s,
        )
        #: The API root: Message Batches live beside Messages.
        self.base_url = (base_url or DEFAULT_BASE_URL).rstrip("/")

    @classmethod
    def from_env(cls, http: HTTPClient, env: Mapping[str, str] = os.environ) -> AnthropicProvider:
        return cls(http, api_key=env.get("ANTHROPIC_API_KEY") or None, base_url=env.get("ANTHROPIC_BASE_URL") or None)

    def auth_headers(self, api_key: str) -> dict[str, str]:
        return {"x-api-key": api_key}

    @property
    def genai_name(self) -> str:
        return "anthropic"

    def build_body(self, model: str, request: ChatRequest, *, stream: bool) -> dict[str, object]:
        return build_body(model, request, stream=stream)

    def error_from_body(self, status: int, headers: Mapping[str, str], body: bytes, *, model: str) -> LLMQError:
        return anthropic_error_from_body(status, headers, body, provider=self.name, model=model, secret=self._api_key)

    def parse_completion(
        self, model: str, request: ChatRequest, headers: Mapping[str, str], content: bytes
    ) -> Completion:
        completion = parse_message(
            content, request_id=headers.get("request-id"), structured=structured_tool(model, request.params)
        )
        completion.ratelimit = parse_ratelimit(headers)
        return completion

    def open_response_stream(self, model: str, request: ChatRequest, response: ResponseBody) -> AnthropicStream:
        return AnthropicStream(
            response,
            provider=self.name,
            model=model,
            secret=self._api_key,
            structured=structured_tool(model, request.params),
        )


def _usage(raw: Mapping[str, object], prev: Usage | None = None, *, estimated: bool = False) -> Usage:
    """Anthropic's ``input_tokens`` excludes cache reads and writes; our ``prompt_tokens`` is all three.

    A ``message_delta`` usage may leave the input counts out: they are kept from ``prev``
    (``message_start``'s).
    """

    def count(key: str, before: int) -> int:
        value = raw.get(key)
        return int(value) if isinstance(value, int | float) and value else before

    fresh = count("input_tokens", prev.prompt_tokens - prev.cached_tokens - prev.cache_write_tokens if prev else 0)
    cached = count("cache_read_input_tokens", prev.cached_tokens if prev else 0)
    written = count("cache_creation_input_tokens", prev.cache_write_tokens if prev else 0)
    # ``cache_creation`` splits the writes by TTL (ephemeral_5m_input_tokens / ephemeral_1h_input_tokens)
    split = raw.get("cache_creation")
    long = split.get("ephemeral_1h_input_tokens") if isinstance(split, Mapping) else None
    written_1h = int(long) if isinstance(long, int | float) and long else (prev.cache_write_1h_tokens if prev else 0)
    return Usage(
        prompt_tokens=fresh + cached + written,
        completion_tokens=count("output_tokens", 0),
        cached_tokens=cached,
        cache_write_tokens=written,
        cache_write_1h_tokens=min(written_1h, written),
        estimated=estimated,
    )


def parse_message(content: bytes, *, request_id: str | None = None, structured: str | None = None) -> Completion:
    """A Messages response; with ``structured``, that forced tool's input is the answer text."""
    payload = json.loads(content)
    text: list[str] = []
    thinking: list[str] = []
    reasoning: list[ReasoningBlock] = []
    calls: list[ToolCall] = []
    for block in payload.get("content") or []:
        kind = block.get("type")
        if kind == "text":
            text.append(block.get("text") or "")
        elif kind == "tool_use" and structured is not None and block.get("name") == structured:
            text.append(normalize_arguments(block.get("input")))
        elif kind == "tool_use":
            calls.append(
                ToolCall(
                    id=block.get("id") or new_call_id("toolu_"),
                    function=FunctionCall(name=block["name"], arguments=normalize_arguments(block.get("input"))),
                )
            )
        elif kind == "thinking":
            thinking.append(block.get("thinking") or "")
            reasoning.append(
                ReasoningBlock(type="thinking", thinking=block.get("thinking") or "", signature=block["signature"])
            )
        elif kind == "redacted_thinking":
            reasoning.append(ReasoningBlock(type="redacted_thinking", data=block["data"]))
    reason = payload.get("stop_reason")
    usage = payload.get("usage")
    finish = FINISH_REASONS.get(reason, reason)
    if structured is not None and reason == "tool_use" and not calls:
        finish = "stop"
    refused = reason == "refusal"
    return Completion(
        text="" if refused else "".join(text),
        refusal=("".join(text) or "the model declined to answer") if refused else None,
        tool_calls=calls,
        finish_reason=finish,
        usage=_usage(usage) if isinstance(usage, dict) else None,
        thinking="".join(thinking),
        reasoning_blocks=reasoning,
        response_model=payload.get("model"),
        request_id=request_id or payload.get("request_id"),
        response_id=payload.get("id"),
        native_finish_reason=reason,
    )


def _reasoning_blocks(
    thought: dict[int, tuple[list[str], list[str]]], redacted: dict[int, str]
) -> list[ReasoningBlock]:
    """A stream's thinking and redacted-thinking blocks, in their order in the answer."""
    blocks: list[ReasoningBlock] = []
    for index in sorted({*thought, *redacted}):
        if index in redacted:
            blocks.append(ReasoningBlock(type="redacted_thinking", data=redacted[index]))
        else:
            parts, signature = thought[index]
            blocks.append(ReasoningBlock(type="thinking", thinking="".join(parts), signature="".join(signature)))
    return blocks


class AnthropicStream(ResponseStream):
    """Messages SSE: dispatch on each ``data:`` payload's ``type``; ``message_stop`` ends it.

    ``usage`` is set from ``message_start`` with ``estimated=True`` (its ``output_tokens`` is
    provisional), and replaced by the final counts from ``message_delta``; so after a mid-stream
    error it still carries the prompt tokens the provider reported.
    """

    def __init__(
        self,
        response: ResponseBody,
        *,
        provider: str,
        model: str,
        secret: str | None = None,
        structured: str | None = None,
    ) -> None:
        super().__init__(response, provider=provider, model=model, request_id=response.headers.get("request-id"))
        self._secret = secret
        self._structured = structured
        self.ratelimit = parse_ratelimit(response.headers)

    def __iter__(self) -> Iterator[str]:
        decode = decode_json
        parts = self.text_parts
        thinking: list[str] = []
        #: index -> the block's thinking parts, signature / redacted data (sent back unchanged)
        thought: dict[int, tuple[list[str], list[str]]] = {}
        redacted: dict[int, str] = {}
        tools = ToolCallAccumulator()
        tool_blocks: set[int] = set()  # indices of tool_use blocks (server tools are not ours)
        answer_blocks: set[int] = set()  # the forced structured-output tool: its input is the text
        try:
            lines = iter_lines(self._begin())
            for line in lines:
                if not line.startswith(b"data:"):
                    continue  # "event:" names repeat the payload's type; blank lines end events
                try:
                    event = decode(line[5:].decode())
                except ValueError:
                    data = sse_continuation(line[5:], lines)
                    try:
                        event = decode(data.decode())
                    except ValueError:
                        raise self._malformed(data) from None
                kind = event["type"]
                if kind == "content_block_delta":
                    delta = event["delta"]
                    dtype = delta["type"]
                    if dtype == "text_delta":
                        text = delta["text"]
                        if text:
                            if text.__class__ is not str:
                                raise TypeError(f"text_delta is {type(text).__name__}")
                            parts.append(text)
                            yield text
                    elif dtype == "input_json_delta":
                        index = event["index"]
                        if index in tool_blocks:
                            tools.add_arguments(index, delta["partial_json"])
                        elif index in answer_blocks and delta["partial_json"]:
                            if delta["partial_json"].__class__ is not str:
                                raise TypeError("partial_json is not text")
                            parts.append(delta["partial_json"])
                            yield delta["partial_json"]
                    elif dtype == "thinking_delta":
                        thought_text = _text(delta["thinking"])
                        thinking.append(thought_text)
                        thought[event["index"]][0].append(thought_text)
                    elif dtype == "signature_delta":
                        thought[event["index"]][1].append(_text(delta["signature"]))
                    # citations_delta: nothing we keep
                elif kind == "ping" or kind == "content_block_stop":
                    continue
                elif kind == "content_block_start":
                    block = event["content_block"]
                    if block.get("type") == "tool_use" and block.get("name") == self._structured:
                        answer_blocks.add(event["index"])
                    elif block.get("type") == "tool_use":
                        # a streamed tool_use block starts with input {}; the input follows in deltas
                        tools.start(event["index"], block.get("id"), block.get("name"))
                        tool_blocks.add(event["index"])
                    elif block.get("type") == "thinking":
                        thought[event["index"]] = (
                            [_text(block.get("thinking") or "")],
                            [_text(block.get("signature") or "")],
                        )
                    elif block.get("type") == "redacted_thinking":
                        redacted[event["index"]] = _text(block["data"])
                elif kind == "message_delta":
                    delta = event.get("delta") or {}
                    reason = delta.get("stop_reason")
                    if reason:
                        self.native_finish_reason = reason
                        self.finish_reason = FINISH_REASONS.get(reason, reason)
                        if reason == "tool_use" and answer_blocks and not tool_blocks:
                            self.finish_reason = "stop"
                    usage = event.get("usage")
                    if usage:
                        self.usage = _usage(usage, self.usage)
                elif kind == "message_start":
                    message = event["message"]
                    self.response_id = message.get("id")
                    self.response_model = message.get("model")
                    usage = message.get("usage")
                    if usage:
                        self.usage = _usage(usage, estimated=True)
                elif kind == "message_stop":
                    self.completed = True
                    self._drain(lines)
                    break
                elif kind == "error":
                    error = event.get("error") or {}
                    raise error_in_stream(
                        provider=self._provider,
                        model=self._model,
                        message=redact(str(error.get("message") or ""), self._secret),
                        kind=error.get("type") if isinstance(error.get("type"), str) else None,
                        request_id=self.request_id,
                    )
        except Exception as exc:
            self._raise_failed(exc)
        finally:
            self._response.close()
            if thinking:
                self.thinking = "".join(thinking)
        if thought or redacted:
            try:
                self.reasoning_blocks = _reasoning_blocks(thought, redacted)
            except ValueError as exc:  # a thinking block without its signature cannot be sent back
                self._raise_failed(exc)
        if tools:
            self.tool_calls = tools.build(id_prefix="toolu_")
        if answer_blocks and not parts:
            parts.append("{}")  # a tool input streamed as a lone "" fragment is {}
        if self.native_finish_reason == "refusal":
            self.refusal = self.text or "the model declined to answer"
            self.text_parts = []
        self._finish("message_stop")


def _text(value: object) -> str:
    """A text field of a stream event; anything else is a malformed event (typed by the read loop)."""
    if value.__class__ is not str:
        raise TypeError(f"expected text, got {type(value).__name__}")
    return value

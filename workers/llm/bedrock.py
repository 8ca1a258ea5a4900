"""AWS Bedrock Converse (``POST /model/{id}/converse``) and ConverseStream (``/converse-stream``).

Translation: system messages become ``system`` blocks; ``max_tokens``, ``temperature``, ``top_p``
and ``stop`` go into ``inferenceConfig``; tools are ``toolSpec``s with ``inputSchema.json``; tool
calls are ``toolUse`` blocks (input as an object) and results ``toolResult`` blocks in a user
turn; ``response_format`` is ``outputConfig.textFormat`` (native structured output); reasoning
is Claude's ``thinking`` in ``additionalModelRequestFields``, and its blocks (text + signature,
or redacted) are sent back first in the assistant turn. Prompt caching: a ``cache_control``
breakpoint becomes a ``cachePoint`` block after the system block, part, message or tool it is on,
and ``prompt_cache: "auto"`` places them as for Anthropic (after the system prompt, else the tools,
and after the conversation so far), for the model families Bedrock caches for: Claude (system,
messages, tools; ``ttl: "1h"`` passed on) and Nova (system and messages; 5 minutes). Other models,
and an inference-profile ARN that does not name its model, get no ``cachePoint``: they ignore it. Requests are signed with SigV4 from the
standard AWS credential chain, or carry a Bedrock API key as a bearer token; both, and the
event-stream decoding, come from botocore (:mod:`workers.llm.aws`).

Wire quirks handled here: the binary ``application/vnd.amazon.eventstream`` framing (length
prefixes and two CRC32s per frame, checked; a frame may straddle reads); a ``p`` padding field in
every payload; no ``contentBlockStart`` for text blocks; tool input streamed as JSON string
pieces but an object in whole responses; usage only in the trailing ``metadata`` event after
``messageStop``; reasoning text and signature deltas and ``redactedContent``; exception frames
(``:message-type: exception``) inside a 200 stream; errors typed only by the ``x-amzn-ErrorType``
header (with a ``:http://internal.amazon.com/...`` suffix), throttling without any retry hint.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import quote

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
from workers.contract.messages import MAX_CACHE_BREAKPOINTS, message_breakpoints
from workers.llm.aws import AWSLibrary, FrameError
from workers.llm.base import (
    ChatRequest,
    Completion,
    ResponseBody,
    ResponseStream,
    ToolCallAccumulator,
    call_arguments,
    new_call_id,
    tool_names,
)
from workers.llm.errormap import error_for_status, error_in_stream, redact
from workers.llm.errors import (
    AuthenticationError,
    ConfigurationError,
    ContentFilteredError,
    InsufficientQuotaError,
    LLMQError,
    ModelNotFoundError,
    OverloadedError,
    PermissionDeniedError,
    ProviderError,
    ProviderTimeoutError,
    RateLimitedError,
    ServerError,
)
from workers.llm.httpclient import HTTPClient
from workers.llm.httpprovider import HTTPProvider

__all__ = ["BedrockProvider", "BedrockStream", "bedrock_error_from_body", "build_body", "parse_converse"]

#: Bedrock ``stopReason`` -> our (OpenAI) ``finish_reason``; guardrails and filters raise instead.
FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "tool_use": "tool_calls",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
}
FILTERED = frozenset({"guardrail_intervened", "content_filtered"})

#: Error type (``x-amzn-ErrorType``, or an exception frame's type) -> (HTTP status, class).
ERROR_TYPES: dict[str, tuple[int, type[ProviderError] | None]] = {
    "ThrottlingException": (429, RateLimitedError),
    "ServiceUnavailableException": (503, ServerError),
    "ModelNotReadyException": (429, OverloadedError),
    "ModelTimeoutException": (408, ProviderTimeoutError),
    "InternalServerException": (500, ServerError),
    "ModelErrorException": (424, ServerError),
    "ModelStreamErrorException": (424, ServerError),
    "ValidationException": (400, None),  # the wording decides: context window or a bad request
    "AccessDeniedException": (403, PermissionDeniedError),
    "ResourceNotFoundException": (404, ModelNotFoundError),
    "ServiceQuotaExceededException": (400, InsufficientQuotaError),
    "UnrecognizedClientException": (403, AuthenticationError),
    "InvalidSignatureException": (403, AuthenticationError),
    "ExpiredTokenException": (403, AuthenticationError),
}


def _error_type(raw: str | None) -> str | None:
    """``"ThrottlingException:http://internal.amazon.com/..."`` -> ``"ThrottlingException"``."""
    if not raw:
        return None
    name = raw.split(":", 1)[0].strip()
    return name[:1].upper() + name[1:] if name else None


def bedrock_error_from_body(
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    *,
    provider: str = "bedrock",
    model: str = "",
    secret: str | None = None,
) -> LLMQError:
    """``{"message": ...}`` typed by the ``x-amzn-ErrorType`` header -> our tree."""
    message, kind = "", _error_type(headers.get("x-amzn-errortype"))
    try:
        payload = json.loads(body)
    except ValueError:
        payload, message = None, body[:500].decode("utf-8", "replace")
    if isinstance(payload, dict):
        message = str(payload.get("message") or payload.get("Message") or "")
        if kind is None and isinstance(payload.get("__type"), str):  # the JSON protocol's own field
            kind = _error_type(payload["__type"].rsplit("#", 1)[-1])
    known = ERROR_TYPES.get(kind or "")
    return error_for_status(
        status,
        headers,
        provider=provider,
        model=model,
        message=redact(message, secret),
        kind=kind,
        request_id=headers.get("x-amzn-requestid"),
        error_class=known[1] if known else None,
    )


def _exception(kind: str, payload: bytes, provider: str, model: str, request_id: str | None) -> LLMQError:
    """An exception frame inside a 200 stream (``serviceUnavailableException``...)."""
    try:
        message = str(json.loads(payload).get("message") or "")
    except (ValueError, AttributeError):
        message = payload[:500].decode("utf-8", "replace")
    name = _error_type(kind) or "InternalServerException"
    status, cls = ERROR_TYPES.get(name, (500, ServerError))
    if cls is None:
        return error_in_stream(
            provider=provider, model=model, message=message, code=kind, kind=name, request_id=request_id, status=status
        )
    return cls(
        message or name,
        provider=provider,
        model=model,
        status=status,
        code=kind,
        request_id=request_id,
        details={"type": name, "in_stream": True},
    )


# --- request -------------------------------------------------------------------------------------


#: Bedrock model families that take ``cachePoint`` blocks, by a fragment of their model id.
_CLAUDE, _NOVA = "anthropic.claude", "amazon.nova"


def cache_family(model: str) -> str | None:
    """``claude`` or ``nova`` when ``model`` takes ``cachePoint`` blocks, else None (ignored)."""
    return "claude" if _CLAUDE in model else "nova" if _NOVA in model else None


def _point(ttl: str, family: str) -> dict[str, object]:
    """A ``cachePoint`` block; a 1-hour TTL is Claude's (Nova caches for 5 minutes)."""
    if ttl == "1h" and family == "claude":
        return {"cachePoint": {"type": "default", "ttl": "1h"}}
    return {"cachePoint": {"type": "default"}}


def _with_points(message: Message, blocks: list[dict[str, object]], family: str) -> list[dict[str, object]]:
    """``blocks`` (``message`` as Converse content) with a ``cachePoint`` after each marked part
    (a user's parts map one to one) and after the message when the message itself is marked."""
    if message.role == "user" and isinstance(message.content, list) and len(message.content) == len(blocks):
        out: list[dict[str, object]] = []
        for part, block in zip(message.content, blocks, strict=True):
            out.append(block)
            if part.cache_control is not None:
                out.append(_point(part.cache_control.ttl, family))
        if message.cache_control is not None:
            out.append(_point(message.cache_control.ttl, family))
        return out
    marks = message_breakpoints(message)  # merged into one text: one point at its end
    return [*blocks, _point(marks[0], family)] if marks else blocks


def _is_point(block: object) -> bool:
    return isinstance(block, dict) and "cachePoint" in block


def _auto_points(body: dict[str, object], family: str) -> None:
    """``prompt_cache: "auto"``: a ``cachePoint`` after the system prompt (else after the tools,
    Claude only) and one after the conversation so far, within the four a request may carry."""
    groups: list[list[Any]] = []
    system = body.get("system")
    config = body.get("toolConfig")
    tools = config.get("tools") if isinstance(config, dict) else None
    turns = body.get("messages")
    for group in (tools, system):
        if isinstance(group, list):
            groups.append(group)
    for turn in turns if isinstance(turns, list) else []:
        if isinstance(turn, dict) and isinstance(turn.get("content"), list):
            groups.append(turn["content"])
    taken = sum(1 for group in groups for b in group if _is_point(b))
    wanted: list[list[Any]] = []
    if isinstance(system, list) and system:
        wanted.append(system)
    elif isinstance(tools, list) and tools and family == "claude":
        wanted.append(tools)
    if isinstance(turns, list) and turns and isinstance(turns[-1], dict) and isinstance(turns[-1].get("content"), list):
        wanted.append(turns[-1]["content"])
    order = [id(group) for group in groups]
    for group in wanted:
        if group and not _is_point(group[-1]) and taken < MAX_CACHE_BREAKPOINTS:
            # TTLs must not grow along the prompt: before a caller's 1-hour point, an hour too
            later = groups[order.index(id(group)) + 1 :]
            long = any(_is_point(b) and b["cachePoint"].get("ttl") == "1h" for g in later for b in g)
            group.append(_point("1h" if long else "5m", family))
            taken += 1


def _reasoning(block: ReasoningBlock) -> dict[str, object]:
    if block.type == "redacted_thinking":
        return {"reasoningContent": {"redactedContent": block.data}}
    return {"reasoningContent": {"reasoningText": {"text": block.thinking, "signature": block.signature}}}


def _blocks(message: Message, names: Mapping[str, str] | None) -> tuple[str, list[dict[str, object]]]:
    """One contract message as a Converse ``(role, content)``; ``names`` (call id -> tool name): the
    request sends no ``toolConfig``, so tool calls and results are written as text (Converse refuses
    ``toolUse``/``toolResult`` blocks without one)."""
    if message.role == "tool":
        if names is not None:
            name = names.get(message.tool_call_id or "", "tool")
            return "user", [{"text": f"[result of tool {name} (call {message.tool_call_id})]: {message.text}"}]
        result = {"toolUseId": message.tool_call_id, "content": [{"text": message.text}]}
        return "user", [{"toolResult": result}]
    if message.role == "assistant":
        blocks = [_reasoning(b) for b in message.reasoning_blocks or [] if b.provider == "bedrock"]
        if message.text:
            blocks.append({"text": message.text})
        for call in message.tool_calls or []:
            if names is not None:
                blocks.append({"text": f"[call {call.id} of tool {call.function.name}: {call.function.arguments}]"})
            else:
                blocks.append(
                    {
                        "toolUse": {
                            "toolUseId": call.id,
                            "name": call.function.name,
                            "input": call_arguments(call, "bedrock"),
                        }
                    }
                )
        return "assistant", blocks or [{"text": ""}]
    if isinstance(message.content, list):
        return "user", [_part(p) for p in message.content]
    return "user", [{"text": message.content or ""}]


def _part(part: TextPart | ImagePart) -> dict[str, object]:
    if isinstance(part, TextPart):
        return {"text": part.text}
    info = part.image_url.info  # base64 only: the capability check refused links
    image_format = (info.media_type or "image/png").rpartition("/")[2]
    return {"image": {"format": image_format, "source": {"bytes": info.data}}}


def _tool_choice(p: RequestParams) -> dict[str, object] | None:
    choice = p.tool_choice
    if isinstance(choice, NamedToolChoice):
        return {"tool": {"name": choice.function.name}}
    if choice == "auto":
        return {"auto": {}}
    if choice == "required":
        return {"any": {}}
    return None


def build_body(request: ChatRequest, model: str = "") -> dict[str, object]:
    p = request.params
    family = cache_family(model)
    send_tools = bool(request.tools) and p.tool_choice != "none"
    # without a toolConfig, earlier turns' tool calls and results go as text (see _blocks)
    names = None if send_tools else tool_names(request.messages)
    system: list[dict[str, object]] = []
    turns: list[dict[str, object]] = []
    for message in request.messages:
        if message.role == "system":
            system.append({"text": message.text})
            marks = message_breakpoints(message)
            if family is not None and marks:
                system.append(_point(marks[0], family))
            continue
        role, blocks = _blocks(message, names)
        if family is not None:
            blocks = _with_points(message, blocks, family)
        previous = turns[-1]["content"] if turns and turns[-1]["role"] == role else None
        if isinstance(previous, list):  # Converse alternates roles: one turn's results go together
            previous.extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})
    config: dict[str, object] = {"maxTokens": p.max_tokens}
    if p.temperature is not None:
        config["temperature"] = p.temperature
    if p.top_p is not None:
        config["topP"] = p.top_p
    if p.stop:
        config["stopSequences"] = list(p.stop)
    body: dict[str, object] = {"messages": turns, "inferenceConfig": config}
    if system:
        body["system"] = system
    if send_tools:
        specs: list[dict[str, object]] = []
        for t in request.tools:
            spec = {
                "name": t.function.name,
                **({"description": t.function.description} if t.function.description else {}),
                "inputSchema": {"json": t.function.parameters or {"type": "object"}},
            }
            specs.append({"toolSpec": spec})
            if t.cache_control is not None and family == "claude":  # Nova caches no tools
                specs.append(_point(t.cache_control.ttl, family))
        tools: dict[str, object] = {"tools": specs}
        choice = _tool_choice(p)
        if choice is not None:
            tools["toolChoice"] = choice
        body["toolConfig"] = tools
    fmt = p.response_format
    if isinstance(fmt, JsonSchemaFormat | JsonObjectFormat):
        schema = fmt.json_schema.schema_ if isinstance(fmt, JsonSchemaFormat) else {"type": "object"}
        name = fmt.json_schema.name if isinstance(fmt, JsonSchemaFormat) else "answer"
        body["outputConfig"] = {
            "textFormat": {
                "type": "json_schema",
                "structure": {"jsonSchema": {"schema": json.dumps(schema), "name": name}},
            }
        }
    if p.reasoning is not None:
        budget = p.reasoning.anthropic_budget()
        body["additionalModelRequestFields"] = {"thinking": {"type": "enabled", "budget_tokens": budget}}
    if p.prompt_cache == "auto" and family is not None:
        _auto_points(body, family)
    return body


# --- response ------------------------------------------------------------------------------------


def bedrock_usage(raw: object) -> Usage | None:
    """``inputTokens`` excludes cache reads and writes; our ``prompt_tokens`` is all three."""
    if not isinstance(raw, dict):
        return None

    def count(key: str) -> int:
        value = raw.get(key)
        return int(value) if isinstance(value, int | float) else 0

    cached, written = count("cacheReadInputTokens"), count("cacheWriteInputTokens")
    # ``cacheDetails`` splits the writes by TTL: [{"ttl": "1h", "inputTokens": N}, {"ttl": "5m", ...}]
    details = raw.get("cacheDetails")
    listed = details if isinstance(details, list) else []
    long = sum(
        int(d["inputTokens"])
        for d in listed
        if isinstance(d, dict) and d.get("ttl") == "1h" and isinstance(d.get("inputTokens"), int | float)
    )
    return Usage(
        prompt_tokens=count("inputTokens") + cached + written,
        completion_tokens=count("outputTokens"),
        cached_tokens=cached,
        cache_write_tokens=written,
        cache_write_1h_tokens=min(long, written),
    )


def _filtered(reason: str, provider: str, model: str) -> ContentFilteredError:
    return ContentFilteredError(
        f"the answer was stopped by a guardrail or content filter ({reason})",
        provider=provider,
        model=model,
        code=reason,
    )


def parse_converse(
    content: bytes, *, provider: str = "bedrock", model: str = "", request_id: str | None = None
) -> Completion:
    payload = json.loads(content)
    text: list[str] = []
    thinking: list[str] = []
    reasoning: list[ReasoningBlock] = []
    calls: list[ToolCall] = []
    for block in ((payload.get("output") or {}).get("message") or {}).get("content") or ():
        if "text" in block:
            text.append(block["text"])
        elif "toolUse" in block:
            use = block["toolUse"]
            calls.append(
                ToolCall(
                    id=use.get("toolUseId") or new_call_id("tooluse_"),
                    function=FunctionCall(
                        name=use["name"],
                        arguments=json.dumps(use.get("input") or {}, separators=(",", ":"), ensure_ascii=False),
                    ),
                )
            )
        elif "reasoningContent" in block:
            content_block = block["reasoningContent"]
            if "redactedContent" in content_block:
                reasoning.append(
                    ReasoningBlock(type="redacted_thinking", provider="bedrock", data=content_block["redactedContent"])
                )
            else:
                rt = content_block.get("reasoningText") or {}
                thinking.append(rt.get("text") or "")
                if rt.get("signature"):
                    reasoning.append(
                        ReasoningBlock(
                            type="thinking",
                            provider="bedrock",
                            thinking=rt.get("text") or "",
                            signature=rt["signature"],
                        )
                    )
    reason = payload.get("stopReason")
    if reason in FILTERED:
        raise _filtered(reason, provider, model)
    return Completion(
        text="".join(text),
        tool_calls=calls,
        finish_reason=FINISH_REASONS.get(reason, reason),
        usage=bedrock_usage(payload.get("usage")),
        thinking="".join(thinking),
        reasoning_blocks=reasoning,
        request_id=request_id,
        native_finish_reason=reason,
    )


class BedrockStream(ResponseStream):
    """ConverseStream: binary frames, each one event (or exception) with a JSON payload."""

    def __init__(self, response: ResponseBody, *, provider: str, model: str, aws: AWSLibrary) -> None:
        super().__init__(response, provider=provider, model=model, request_id=response.headers.get("x-amzn-requestid"))
        self._aws = aws

    def __iter__(self) -> Iterator[str]:
        parts = self.text_parts
        thinking: list[str] = []
        tools = ToolCallAccumulator()
        reasoning: dict[int, list[str]] = {}
        signatures: dict[int, list[str]] = {}
        redacted: dict[int, str] = {}
        try:
            for frame in self._aws.frames(self._begin()):
                headers = frame.headers
                kind = headers.get(":message-type")
                if kind != "event":
                    name = str(headers.get(":exception-type") or headers.get(":error-code") or "exception")
                    raise _exception(name, frame.payload, self._provider, self._model, self.request_id)
                event = headers.get(":event-type")
                data: dict[str, Any] = json.loads(frame.payload) if frame.payload else {}
                if event == "contentBlockDelta":
                    index = data["contentBlockIndex"]
                    delta = data["delta"]
                    text = delta.get("text")
                    if text is not None:
                        if text.__class__ is not str:
                            raise TypeError(f"delta text is {type(text).__name__}")
                        if text:
                            parts.append(text)
                            yield text
                    elif "toolUse" in delta:
                        tools.add_arguments(index, delta["toolUse"].get("input") or "")
                    elif "reasoningContent" in delta:
                        rc = delta["reasoningContent"]
                        if "text" in rc:
                            thinking.append(rc["text"])
                            reasoning.setdefault(index, []).append(rc["text"])
                        if "signature" in rc:
                            signatures.setdefault(index, []).append(rc["signature"])
                        if "redactedContent" in rc:
                            redacted[index] = rc["redactedContent"]
                elif event == "contentBlockStart":
                    use = (data.get("start") or {}).get("toolUse")
                    if use:
                        tools.start(data["contentBlockIndex"], use.get("toolUseId"), use.get("name"))
                elif event == "messageStop":
                    reason = data["stopReason"]
                    if reason.__class__ is not str:
                        raise TypeError(f"stopReason is {type(reason).__name__}")
                    self.native_finish_reason = reason
                    if reason in FILTERED:
                        raise _filtered(reason, self._provider, self._model)
                    self.finish_reason = FINISH_REASONS.get(reason, reason)
                    self.completed = True
                elif event == "metadata":
                    self.usage = bedrock_usage(data.get("usage"))
        except FrameError as exc:
            self._raise_failed(self._malformed(str(exc).encode()))
        except Exception as exc:
            self._raise_failed(exc)
        finally:
            self._response.close()
            if thinking:
                self.thinking = "".join(thinking)
        if tools:
            self.tool_calls = tools.build(id_prefix="tooluse_")
        blocks: list[ReasoningBlock] = []
        for index in sorted({*reasoning, *redacted}):
            if index in redacted:
                blocks.append(ReasoningBlock(type="redacted_thinking", provider="bedrock", data=redacted[index]))
            elif signatures.get(index):
                blocks.append(
                    ReasoningBlock(
                        type="thinking",
                        provider="bedrock",
                        thinking="".join(reasoning[index]),
                        signature="".join(signatures[index]),
                    )
                )
        self.reasoning_blocks = blocks
        self._finish("messageStop")


class BedrockProvider(HTTPProvider[BedrockStream]):
    name = "bedrock"
    stream_media_type = "application/vnd.amazon.eventstream"
    key_env = "AWS_BEARER_TOKEN_BEDROCK"

    def __init__(
        self,
        http: HTTPClient,
        *,
        aws: AWSLibrary,
        region: str,
        base_url: str | None = None,
        api_key: str | None = None,
        credentials: Any = None,
        profile: str | None = None,
        name: str | None = None,
        key_env: str | None = None,
        headers: Mapping[str, str] | None = None,
        timeout_s: float | None = None,
    ) -> None:
        super().__init__(
            http,
            url=(base_url or f"https://bedrock-runtime.{region}.amazonaws.com").rstrip("/"),
            api_key=api_key,
            static_headers=headers,
            name=name,
            key_env=key_env,
            timeout_s=timeout_s,
        )
        self._aws = aws
        self._region = region
        self._credentials = credentials
        self._profile = profile

    @property
    def genai_name(self) -> str:
        return "aws.bedrock"

    def endpoint(self, model: str, *, stream: bool) -> str:
        return f"{self._url}/model/{quote(model, safe='')}/{'converse-stream' if stream else 'converse'}"

    def credentials(self) -> Any:
        """The signing credentials: given, or the standard AWS chain's (resolved once)."""
        if self._credentials is None:
            self._credentials = self._aws.default_credentials(self._profile)
        return self._credentials

    def sign(self, url: str, headers: dict[str, str], body: bytes) -> dict[str, str]:
        if self._api_key:  # a Bedrock API key: a bearer token, nothing to sign
            return headers
        credentials = self.credentials()
        if credentials is None:
            raise ConfigurationError(
                f"provider {self.name!r} (type bedrock) found no AWS credentials (AWS_ACCESS_KEY_ID/"
                "AWS_SECRET_ACCESS_KEY, a profile, or an instance role)",
                provider=self.name,
            )
        return self._aws.sign(credentials, region=self._region, url=url, headers=headers, body=body)

    def build_body(self, model: str, request: ChatRequest, *, stream: bool) -> dict[str, object]:
        return build_body(request, model)

    def error_from_body(self, status: int, headers: Mapping[str, str], body: bytes, *, model: str) -> LLMQError:
        return bedrock_error_from_body(status, headers, body, provider=self.name, model=model, secret=self._api_key)

    def parse_completion(
        self, model: str, request: ChatRequest, headers: Mapping[str, str], content: bytes
    ) -> Completion:
        return parse_converse(content, provider=self.name, model=model, request_id=headers.get("x-amzn-requestid"))

    def open_response_stream(self, model: str, request: ChatRequest, response: ResponseBody) -> BedrockStream:
        return BedrockStream(response, provider=self.name, model=model, aws=self._aws)

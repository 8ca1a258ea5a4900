"""Google Gemini, native API: ``models/{model}:generateContent`` and ``:streamGenerateContent?alt=sse``.

Translation: system messages become ``systemInstruction``; assistant turns are ``model`` turns whose
tool calls are ``functionCall`` parts (args as objects); ``tool`` messages become
``functionResponse`` parts named after the call they answer (Gemini has no call ids; ours are
synthesized); tools are ``functionDeclarations``; ``response_format`` is ``responseMimeType`` +
``responseSchema`` (JSON Schema narrowed to the OpenAPI subset Gemini takes); ``reasoning`` is a
``thinkingConfig`` budget with thoughts included. The same wire serves Vertex AI: its
``.../publishers/google`` base URL with a bearer token.

Wire quirks handled here: SSE events separated by CRLF CRLF, no ``event:`` lines and no
terminator (a stream is complete when a candidate's ``finishReason`` arrived); usage repeated in
every chunk, not monotonic (the last one counts), with ``candidatesTokenCount`` or
``thoughtsTokenCount`` absent instead of 0; ``"thought": true`` parts are thinking, not text;
parallel ``functionCall`` parts in one chunk; ``thoughtSignature`` on a part, kept (as a
``thought_signature`` reasoning block naming its call) to be sent back as the API wants; no
tool-call finish reason (``STOP`` after calls is our ``tool_calls``); ``SAFETY`` and other filter
stops, and a prompt blocked with no candidates at all, are a
:class:`~workers.llm.errors.ContentFilteredError`; errors are ``{"error": {code, message, status,
details}}`` (also as a one-element list, and with ``Content-Type: text/event-stream``), a 429 is
``RESOURCE_EXHAUSTED`` whose wait is ``google.rpc.RetryInfo.retryDelay`` (``"26s"``), an invalid
key a 400 whose reason is only in ``ErrorInfo``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import quote, urlsplit

from workers.contract import (
    Alternative,
    FunctionCall,
    ImagePart,
    JsonObjectFormat,
    JsonSchemaFormat,
    Message,
    NamedToolChoice,
    ReasoningBlock,
    RequestParams,
    TextPart,
    TokenLogprob,
    ToolCall,
    TopLogprob,
    Usage,
)
from workers.contract.schemarefs import inline_refs
from workers.llm.base import (
    ChatRequest,
    Completion,
    ResponseBody,
    ResponseStream,
    call_arguments,
    decode_json,
    iter_sse,
    new_call_id,
    tool_names,
)
from workers.llm.errormap import error_for_status, parse_duration, redact
from workers.llm.errors import (
    AuthenticationError,
    ContentFilteredError,
    InsufficientQuotaError,
    LLMQError,
    ProviderError,
    RateLimitedError,
    ServerError,
)
from workers.llm.httpclient import HTTPClient
from workers.llm.httpprovider import HTTPProvider

__all__ = ["GeminiProvider", "GeminiStream", "build_body", "gemini_error_from_body", "parse_response"]

DEFAULT_BASE_URL = "https://generativelanguage.googleapis.com/v1beta"

#: Gemini ``finishReason`` -> our (OpenAI) ``finish_reason``; the filter stops raise instead.
FINISH_REASONS = {"STOP": "stop", "MAX_TOKENS": "length", "FINISH_REASON_UNSPECIFIED": "stop", "OTHER": "stop"}
FILTERED = frozenset(
    {"SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII", "IMAGE_SAFETY", "LANGUAGE", "MODEL_ARMOR"}
)
#: Schema keywords Gemini's ``responseSchema`` / ``parameters`` (an OpenAPI 3.0 subset) accept.
_SCHEMA_KEYS = frozenset(
    {
        "type",
        "format",
        "title",
        "description",
        "nullable",
        "enum",
        "items",
        "minItems",
        "maxItems",
        "properties",
        "required",
        "minProperties",
        "maxProperties",
        "minLength",
        "maxLength",
        "pattern",
        "minimum",
        "maximum",
        "anyOf",
        "propertyOrdering",
        "default",
        "example",
    }
)


# --- errors ------------------------------------------------------------------------------------


def gemini_error_from_body(
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    *,
    provider: str = "gemini",
    model: str = "",
    secret: str | None = None,
) -> LLMQError:
    """``{"error": {"code", "message", "status", "details": [...]}}`` -> our tree."""
    message, kind, reason, retry_after, daily = "", None, None, None, False
    try:
        payload = json.loads(body)
        if isinstance(payload, list) and payload:  # streaming endpoints may wrap it in a list
            payload = payload[0]
        error = payload.get("error") if isinstance(payload, dict) else None
        if isinstance(error, dict):
            message = str(error.get("message") or "")
            kind = error.get("status") if isinstance(error.get("status"), str) else None
            for detail in error.get("details") or ():
                if not isinstance(detail, dict):
                    continue
                at = str(detail.get("@type") or "")
                if at.endswith("google.rpc.ErrorInfo") and isinstance(detail.get("reason"), str):
                    reason = detail["reason"]
                elif at.endswith("google.rpc.RetryInfo"):
                    retry_after = parse_duration(str(detail.get("retryDelay") or ""))
                elif at.endswith("google.rpc.QuotaFailure"):
                    daily = daily or any(
                        "PerDay" in str(v.get("quotaId") or "")
                        for v in detail.get("violations") or ()
                        if isinstance(v, dict)
                    )
    except ValueError:
        message = body[:500].decode("utf-8", "replace")
    cls: type[ProviderError] | None = None
    if status == 429:
        # RESOURCE_EXHAUSTED ("check your plan and billing" is boilerplate): a per-minute limit is
        # waited out; a daily quota (a QuotaFailure ...PerDay...) will not come back for this job
        cls = InsufficientQuotaError if daily and retry_after is None else RateLimitedError
    elif reason in ("API_KEY_INVALID", "API_KEY_SERVICE_BLOCKED") or kind == "UNAUTHENTICATED":
        cls = AuthenticationError
    return error_for_status(
        status,
        headers,
        provider=provider,
        model=model,
        message=redact(message, secret),
        code=kind,
        retry_after=retry_after,
        error_class=cls,
        extra={"reason": reason} if reason else None,
    )


# --- request -----------------------------------------------------------------------------------


def gemini_schema(schema: object) -> object:
    """A JSON Schema narrowed to what Gemini takes: local ``$ref``s inlined (a recursive one cut to
    an object: the capability table refuses it in ``response_format``; tool arguments are validated
    against the full schema), unknown keywords dropped, ``["x", "null"]`` types as ``nullable``,
    ``const`` as a one-value ``enum``."""
    return _narrow(inline_refs(schema, cycles="cut"))


def _narrow(schema: object) -> object:
    if isinstance(schema, list):
        return [_narrow(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out: dict[str, object] = {}
    for key, value in schema.items():
        if key == "properties" and isinstance(value, dict):
            out[key] = {name: _narrow(sub) for name, sub in value.items()}
        elif key in ("items", "anyOf"):
            out[key] = _narrow(value)
        elif key == "type" and isinstance(value, list):
            types = [t for t in value if t != "null"]
            out["type"] = types[0] if types else "string"
            if "null" in value:
                out["nullable"] = True
        elif key == "const":
            out["enum"] = [value]
        elif key == "oneOf":
            out["anyOf"] = _narrow(value)
        elif key in _SCHEMA_KEYS:
            out[key] = value
    return out


def _signatures(message: Message) -> dict[str | None, str]:
    """A model turn's thought signatures by the call they belong to (None: its text)."""
    return {
        b.data: b.signature
        for b in message.reasoning_blocks or []
        if b.type == "thought_signature" and b.provider == "gemini" and b.signature is not None
    }


def _parts(message: Message, names: Mapping[str, str]) -> tuple[str, list[dict[str, object]]]:
    """One contract message as a Gemini ``(role, parts)``."""
    if message.role == "tool":
        name = names.get(message.tool_call_id or "", "tool")
        return "user", [{"functionResponse": {"name": name, "response": {"result": message.text}}}]
    if message.role == "assistant":
        signatures = _signatures(message)
        parts: list[dict[str, object]] = []
        if message.text:
            part: dict[str, object] = {"text": message.text}
            if None in signatures:
                part["thoughtSignature"] = signatures[None]
            parts.append(part)
        for call in message.tool_calls or []:
            part = {"functionCall": {"name": call.function.name, "args": call_arguments(call, "gemini")}}
            if call.id in signatures:
                part["thoughtSignature"] = signatures[call.id]
            parts.append(part)
        return "model", parts or [{"text": ""}]
    if isinstance(message.content, list):
        return "user", [_content_part(p) for p in message.content]
    return "user", [{"text": message.content or ""}]


def _content_part(part: TextPart | ImagePart) -> dict[str, object]:
    if isinstance(part, TextPart):
        return {"text": part.text}
    info = part.image_url.info
    if info.data is not None:
        return {"inlineData": {"mimeType": info.media_type, "data": info.data}}
    return {"fileData": {"mimeType": info.media_type or "image/jpeg", "fileUri": part.image_url.url}}


def _tool_config(p: RequestParams) -> dict[str, object] | None:
    choice = p.tool_choice
    if choice is None:
        return None
    if isinstance(choice, NamedToolChoice):
        return {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": [choice.function.name]}}
    mode = {"auto": "AUTO", "none": "NONE", "required": "ANY"}[choice]
    return {"functionCallingConfig": {"mode": mode}}


def build_body(request: ChatRequest) -> dict[str, object]:
    names = tool_names(request.messages)
    system: list[dict[str, object]] = []
    contents: list[dict[str, object]] = []
    for message in request.messages:
        if message.role == "system":
            system.append({"text": message.text})
            continue
        role, parts = _parts(message, names)
        if contents and contents[-1]["role"] == role:  # results of one turn's calls go together
            previous = contents[-1]["parts"]
            assert isinstance(previous, list)
            previous.extend(parts)
        else:
            contents.append({"role": role, "parts": parts})
    p = request.params
    config: dict[str, object] = {"maxOutputTokens": p.max_tokens}
    if p.temperature is not None:
        config["temperature"] = p.temperature
    if p.top_p is not None:
        config["topP"] = p.top_p
    if p.stop:
        config["stopSequences"] = list(p.stop)
    if p.seed is not None:
        config["seed"] = p.seed
    fmt = p.response_format
    if isinstance(fmt, JsonSchemaFormat):
        config["responseMimeType"] = "application/json"
        config["responseSchema"] = gemini_schema(fmt.json_schema.schema_)
    elif isinstance(fmt, JsonObjectFormat):
        config["responseMimeType"] = "application/json"
    if p.presence_penalty is not None:
        config["presencePenalty"] = p.presence_penalty
    if p.frequency_penalty is not None:
        config["frequencyPenalty"] = p.frequency_penalty
    if p.answers > 1:
        config["candidateCount"] = p.answers
    if p.logprobs:
        config["responseLogprobs"] = True
        if p.top_logprobs:
            config["logprobs"] = p.top_logprobs
    if p.reasoning is not None:
        config["thinkingConfig"] = {"thinkingBudget": p.reasoning.anthropic_budget(), "includeThoughts": True}
    body: dict[str, object] = {"contents": contents, "generationConfig": config}
    if system:
        body["systemInstruction"] = {"parts": system}
    if request.tools:
        body["tools"] = [
            {
                "functionDeclarations": [
                    {
                        "name": t.function.name,
                        **({"description": t.function.description} if t.function.description else {}),
                        **({"parameters": gemini_schema(t.function.parameters)} if t.function.parameters else {}),
                    }
                    for t in request.tools
                ]
            }
        ]
        tool_config = _tool_config(p)
        if tool_config is not None:
            body["toolConfig"] = tool_config
    return body


# --- response ----------------------------------------------------------------------------------


def _count(usage: Mapping[str, Any], key: str) -> int:
    value = usage.get(key)
    return int(value) if isinstance(value, int | float) else 0


def gemini_usage(raw: object) -> Usage | None:
    """``usageMetadata``: thoughts are output tokens (billed as such); the prompt count includes
    cached content."""
    if not isinstance(raw, dict):
        return None
    thoughts = _count(raw, "thoughtsTokenCount")
    return Usage(
        prompt_tokens=_count(raw, "promptTokenCount"),
        completion_tokens=_count(raw, "candidatesTokenCount") + thoughts,
        cached_tokens=_count(raw, "cachedContentTokenCount"),
        reasoning_tokens=thoughts,
    )


def gemini_logprobs(raw: Mapping[str, Any]) -> list[TokenLogprob]:
    """A candidate's ``logprobsResult`` (the chosen token and the top candidates at each step)."""
    tops = raw.get("topCandidates") or ()
    out: list[TokenLogprob] = []
    for i, chosen in enumerate(raw.get("chosenCandidates") or ()):
        step = tops[i].get("candidates") or () if i < len(tops) else ()
        out.append(
            TokenLogprob(
                token=chosen["token"],
                logprob=float(chosen["logProbability"]),
                top_logprobs=[TopLogprob(token=t["token"], logprob=float(t["logProbability"])) for t in step],
            )
        )
    return out


class _Other:
    """What the chunks of one more candidate (``candidateCount`` > 1) add up to."""

    __slots__ = ("finish", "logprobs", "text")

    def __init__(self) -> None:
        self.text: list[str] = []
        self.finish: str | None = None
        self.logprobs: list[TokenLogprob] | None = None

    def alternative(self, index: int) -> Alternative:
        finish = FINISH_REASONS.get(self.finish, "stop") if self.finish else None
        return Alternative(index=index, content="".join(self.text), finish_reason=finish, logprobs=self.logprobs)


class _Answer:
    """What the chunks (or the one whole response) of an answer add up to."""

    __slots__ = (
        "blocked",
        "calls",
        "finish",
        "logprobs",
        "many",
        "model",
        "others",
        "response_id",
        "signatures",
        "text",
        "thinking",
        "usage",
    )

    def __init__(self, *, many: bool = False, logprobs: bool = False) -> None:
        #: ``candidateCount`` > 1: candidates other than the first are gathered in ``others``.
        self.many = many
        self.others: dict[int, _Other] = {}
        self.logprobs: list[TokenLogprob] | None = [] if logprobs else None
        self.text: list[str] = []
        self.thinking: list[str] = []
        self.calls: list[ToolCall] = []
        self.signatures: list[ReasoningBlock] = []
        self.finish: str | None = None
        self.usage: Usage | None = None
        self.response_id: str | None = None
        self.model: str | None = None
        self.blocked: dict[str, object] | None = None

    def add(self, chunk: Mapping[str, Any]) -> list[str]:
        """Take one ``GenerateContentResponse``; returns its answer text pieces."""
        if self.response_id is None:
            self.response_id = chunk.get("responseId")
            self.model = chunk.get("modelVersion")
        usage = chunk.get("usageMetadata")
        if usage:
            self.usage = gemini_usage(usage)
        candidates = chunk.get("candidates")
        if not candidates:
            feedback = chunk.get("promptFeedback")
            if isinstance(feedback, dict) and feedback.get("blockReason"):
                self.blocked = feedback
            return []
        candidate = candidates[0]
        if self.many and (len(candidates) > 1 or candidate.get("index")):
            candidate = self._gather(candidates)
        if self.logprobs is not None and candidate.get("logprobsResult"):
            self.logprobs += gemini_logprobs(candidate["logprobsResult"])
        texts: list[str] = []
        for part in (candidate.get("content") or {}).get("parts") or ():
            signature = part.get("thoughtSignature")
            if "text" in part:
                piece = part["text"]
                if piece.__class__ is not str:
                    raise TypeError(f"a text part is {type(piece).__name__}")
                if part.get("thought"):
                    self.thinking.append(piece)
                elif piece:
                    self.text.append(piece)
                    texts.append(piece)
                if signature:
                    self.signatures.append(
                        ReasoningBlock(type="thought_signature", provider="gemini", signature=signature)
                    )
            elif "functionCall" in part:
                fn = part["functionCall"]
                args = fn.get("args")
                call = ToolCall(
                    id=fn.get("id") or new_call_id(),
                    function=FunctionCall(
                        name=fn["name"], arguments=json.dumps(args or {}, separators=(",", ":"), ensure_ascii=False)
                    ),
                )
                self.calls.append(call)
                if signature:
                    self.signatures.append(
                        ReasoningBlock(type="thought_signature", provider="gemini", signature=signature, data=call.id)
                    )
        reason = candidate.get("finishReason")
        if reason:
            self.finish = reason
        return texts

    def _gather(self, candidates: list[Any]) -> Mapping[str, Any]:
        """Take the candidates other than the first into :attr:`others`; returns the first's."""
        first: Mapping[str, Any] = {}
        for candidate in candidates:
            index = candidate.get("index") or 0
            if index == 0:
                first = candidate
                continue
            other = self.others.setdefault(index, _Other())
            for part in (candidate.get("content") or {}).get("parts") or ():
                if isinstance(part.get("text"), str) and not part.get("thought"):
                    other.text.append(part["text"])
            other.finish = candidate.get("finishReason") or other.finish
            if self.logprobs is not None and candidate.get("logprobsResult"):
                other.logprobs = (other.logprobs or []) + gemini_logprobs(candidate["logprobsResult"])
        return first

    def alternatives(self) -> list[Alternative]:
        return [self.others[i].alternative(i) for i in sorted(self.others)]

    def filtered(self, provider: str, model: str) -> ContentFilteredError | None:
        """The error for a blocked prompt or a filter stop, else None."""
        if self.blocked is not None:
            reason = str(self.blocked.get("blockReason"))
            message = str(self.blocked.get("blockReasonMessage") or f"the prompt was blocked ({reason})")
        elif self.finish in FILTERED:
            reason, message = self.finish, f"the answer was stopped by the provider's filter ({self.finish})"
        else:
            return None
        usage = self.usage or Usage()
        return ContentFilteredError(
            message,
            provider=provider,
            model=model,
            code=reason,
            details={
                "finish_reason": self.finish,
                "usage": {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens},
            },
        )

    def finish_reason(self) -> str | None:
        if self.finish is None:
            return None
        if self.finish == "MALFORMED_FUNCTION_CALL":
            return None
        if self.calls and self.finish == "STOP":
            return "tool_calls"
        return FINISH_REASONS.get(self.finish, "stop")

    def malformed_call(self, provider: str, model: str) -> ServerError | None:
        if self.finish != "MALFORMED_FUNCTION_CALL":
            return None
        return ServerError(
            "the model produced a malformed function call", provider=provider, model=model, code=self.finish
        )


def parse_response(
    content: bytes, *, provider: str = "gemini", model: str = "", params: RequestParams | None = None
) -> Completion:
    payload = json.loads(content)
    answer = _Answer(
        many=params is not None and params.answers > 1, logprobs=params is not None and bool(params.logprobs)
    )
    for chunk in payload if isinstance(payload, list) else [payload]:
        answer.add(chunk)
    error = answer.filtered(provider, model) or answer.malformed_call(provider, model)
    if error is not None:
        raise error
    return Completion(
        text="".join(answer.text),
        tool_calls=answer.calls,
        finish_reason=answer.finish_reason(),
        usage=answer.usage or Usage(),
        thinking="".join(answer.thinking),
        reasoning_blocks=answer.signatures,
        response_model=answer.model,
        response_id=answer.response_id,
        native_finish_reason=answer.finish,
        logprobs=answer.logprobs,
        alternatives=answer.alternatives(),
    )


class GeminiStream(ResponseStream):
    """``alt=sse``: each ``data:`` event is a whole ``GenerateContentResponse``; no terminator."""

    def __init__(
        self, response: ResponseBody, *, provider: str, model: str, params: RequestParams | None = None
    ) -> None:
        super().__init__(response, provider=provider, model=model)
        self._params = params

    def __iter__(self) -> Iterator[str]:
        decode = decode_json
        p = self._params
        answer = _Answer(many=p is not None and p.answers > 1, logprobs=p is not None and bool(p.logprobs))
        parts = self.text_parts
        try:
            for _, data in iter_sse(self._begin()):
                try:
                    chunk = decode(data.decode())
                except ValueError:
                    raise self._malformed(data) from None
                if "error" in chunk:
                    error = chunk["error"]
                    raise gemini_error_from_body(
                        int(error.get("code") or 500),
                        {},
                        data,
                        provider=self._provider,
                        model=self._model,
                    )
                for text in answer.add(chunk):
                    parts.append(text)
                    yield text
                if answer.blocked is not None:
                    break
        except Exception as exc:
            self._raise_failed(exc)
        finally:
            self._response.close()
            self.thinking = "".join(answer.thinking)
            self.usage = answer.usage
            self.response_id, self.response_model = answer.response_id, answer.model
            self.native_finish_reason = answer.finish
        error = answer.filtered(self._provider, self._model) or answer.malformed_call(self._provider, self._model)
        if error is not None:
            raise error
        self.tool_calls = answer.calls
        self.reasoning_blocks = answer.signatures
        self.logprobs = answer.logprobs
        self.alternatives = answer.alternatives()
        self.finish_reason = answer.finish_reason()
        self.completed = answer.finish is not None
        self._finish("a finishReason")


class GeminiProvider(HTTPProvider[GeminiStream]):
    name = "gemini"
    key_env = "GEMINI_API_KEY"

    def __init__(
        self,
        http: HTTPClient,
        *,
        api_key: str | None,
        base_url: str | None = None,
        bearer: bool = False,
        name: str | None = None,
        key_env: str | None = None,
        headers: Mapping[str, str] | None = None,
        timeout_s: float | None = None,
    ) -> None:
        base = (base_url or DEFAULT_BASE_URL).rstrip("/")
        if not urlsplit(base).path:  # the API's host alone: its models live under the version
            base += "/v1beta"
        super().__init__(
            http,
            url=base,
            api_key=api_key,
            key_required=True,
            static_headers=headers,
            name=name,
            key_env=key_env,
            timeout_s=timeout_s,
        )
        self._bearer = bearer

    def endpoint(self, model: str, *, stream: bool) -> str:
        # "models/gemini-2.5-flash", as the API names its models, is the same model
        model = quote(model.removeprefix("models/"), safe="")
        if stream:
            return f"{self._url}/models/{model}:streamGenerateContent?alt=sse"
        return f"{self._url}/models/{model}:generateContent"

    @property
    def genai_name(self) -> str:
        return "gcp.vertex_ai" if "aiplatform.googleapis.com" in self._url else "gcp.gemini"

    def auth_headers(self, api_key: str) -> dict[str, str]:
        return {"authorization": f"Bearer {api_key}"} if self._bearer else {"x-goog-api-key": api_key}

    def build_body(self, model: str, request: ChatRequest, *, stream: bool) -> dict[str, object]:
        return build_body(request)

    def error_from_body(self, status: int, headers: Mapping[str, str], body: bytes, *, model: str) -> LLMQError:
        return gemini_error_from_body(status, headers, body, provider=self.name, model=model, secret=self._api_key)

    def parse_completion(
        self, model: str, request: ChatRequest, headers: Mapping[str, str], content: bytes
    ) -> Completion:
        return parse_response(content, provider=self.name, model=model, params=request.params)

    def open_response_stream(self, model: str, request: ChatRequest, response: ResponseBody) -> GeminiStream:
        return GeminiStream(response, provider=self.name, model=model, params=request.params)

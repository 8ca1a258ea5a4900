"""OpenAI Chat Completions on top of the queue: request -> CompletionJob, events -> OpenAI's shapes.

Requests are validated like OpenAI validates them (unknown arguments are a 400 naming the
argument). Every argument that is a job field of the same name and shape (the contract's
``RequestParams``: ``temperature``, ``top_p``, ``stop``, ``seed``, ``tool_choice``, the penalties,
``logit_bias``, ``logprobs``/``top_logprobs``, ``n`` ...) is passed through as it is, so a parameter
added to the contract is accepted here without a change; ``max_tokens``/``max_completion_tokens``,
``reasoning_effort``, ``response_format`` and the messages' ``image_url`` parts are translated;
``cache_control`` prompt-cache breakpoints (Anthropic's form, as LiteLLM-style clients send them) on
messages, text parts and tools are kept, for the worker to pass on by its rule. A
combination the job's provider cannot do is a 400 naming the provider and the field (the contract's
capability table). A few knobs nothing behind the queue uses are accepted and ignored; audio is
refused. The tenant always comes from the bearer token, never from the body.

Responses follow the ``chat.completion`` / ``chat.completion.chunk`` objects exactly, including
``tool_calls`` deltas (one chunk per call, with the whole arguments string), ``refusal``, the
trailing usage chunk when ``stream_options.include_usage`` is set, and ``data: [DONE]``. A stream
with a structured ``response_format`` sends its content once the worker validated it (a repair
turn cannot unsend text already sent). A job failing after the stream started becomes a
``data: {"error": ...}`` event, which the SDKs raise as ``APIError``. An answer that starts over
(a ``repair`` when the identical job a follower shared failed and it called itself, or a new run of
a redelivered job) goes on past the text already sent while it repeats it, and ends with a
``stream_restarted`` error if it differs: sent text cannot be taken back.
"""

from __future__ import annotations

import json
import time
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, JsonValue, ValidationError
from starlette.responses import Response

from producers.chatshape import alternative_choices, logprobs_object
from producers.gateway.body import validation_error
from producers.gateway.errors import GatewayError, error_for_job, feed_error
from producers.gateway.feed import FeedError
from producers.gateway.sse import Item, sse_frame
from workers.contract import CancelledEvent, CompletionResult, RequestParams, StreamEvent, Usage
from workers.contract.catalog import close_names

__all__ = ["ChatCompletionRequest", "ChatStreamRenderer", "completion_body", "is_structured", "parse_request", "to_job"]

_IGNORED = ("service_tier", "store", "safety_identifier", "verbosity")
#: Arguments that are job fields of the same name and shape: passed through, validated by the job.
_PASSED = frozenset(RequestParams.model_fields) - {"max_tokens", "response_format", "reasoning", "user"}


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: bool = False
    include_obfuscation: bool | None = None


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1)
    messages: list[dict[str, JsonValue]] = Field(min_length=1)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(default=None, gt=0)
    max_completion_tokens: int | None = Field(default=None, gt=0)
    tools: list[dict[str, JsonValue]] | None = None
    response_format: dict[str, JsonValue] | None = None
    modalities: list[str] | None = None
    user: str | None = None
    metadata: dict[str, str] | None = None
    reasoning_effort: str | None = None
    #: llmqueue's extensions (``extra_body`` in the SDKs): the scheduling class (default
    #: ``interactive``) and a concurrency key; also the ``X-LLMQ-Priority`` and
    #: ``X-LLMQ-Concurrency-Key`` headers (``producers/gateway/priority.py``).
    priority: str | None = None
    concurrency_key: str | None = None
    #: The response cache (``{"ttl_s": 600, "scope": "tenant"|"global", "sampled": false}``),
    #: validated as the job's ``cache`` (docs/caching.md).
    cache: dict[str, JsonValue] | None = None


def _content_of(content: JsonValue, where: str, *, images: bool) -> str | list[dict[str, Any]] | None:
    """OpenAI content: a string, null, or a list of text (and, in user messages, ``image_url``) parts."""
    if content is None or isinstance(content, str):
        return content
    if isinstance(content, list):
        parts: list[dict[str, Any]] = []
        for i, part in enumerate(content):
            kind = part.get("type") if isinstance(part, dict) else type(part).__name__
            if isinstance(part, dict) and kind in ("text", "input_text"):
                text: dict[str, Any] = {"type": "text", "text": str(part.get("text", ""))}
                if part.get("cache_control") is not None:  # a prompt-cache breakpoint (Anthropic's form)
                    text["cache_control"] = part["cache_control"]
                parts.append(text)
            elif isinstance(part, dict) and kind == "image_url" and images:
                parts.append({"type": "image_url", "image_url": part.get("image_url")})
            else:
                raise GatewayError(
                    400, f"{where}.content.{i}: content parts of type {kind!r} are not supported here"
                    " (text; image_url in user messages)",
                    param=f"{where}.content", code="unsupported_content",
                )  # fmt: skip
        if all(p["type"] == "text" and "cache_control" not in p for p in parts):
            return "".join(p["text"] for p in parts)
        return parts
    raise GatewayError(400, f"{where}.content must be a string or a list of content parts", param=f"{where}.content")


def _message(raw: dict[str, JsonValue], index: int) -> dict[str, Any]:
    where = f"messages.{index}"
    role = raw.get("role")
    if role == "developer":
        role = "system"
    if role not in ("system", "user", "assistant", "tool"):
        raise GatewayError(
            400,
            f"{where}.role: {role!r} is not supported (system, developer, user, assistant, tool)",
            param=f"{where}.role",
        )
    message: dict[str, Any] = {"role": role, "content": _content_of(raw.get("content"), where, images=role == "user")}
    for key in ("name", "tool_call_id", "tool_calls", "cache_control"):
        if raw.get(key) is not None:
            message[key] = raw[key]
    if role == "assistant" and message["content"] is None and not message.get("tool_calls"):
        message["content"] = ""  # OpenAI accepts an empty assistant turn (e.g. a refusal)
    return message


def to_job(req: ChatCompletionRequest, *, tenant: str) -> dict[str, Any]:
    """The CompletionJob (as a dict, validated by the client) for a chat completion request."""
    extra = req.model_extra or {}
    unknown = sorted(set(extra) - set(_IGNORED) - _PASSED)
    if unknown:
        known = [*ChatCompletionRequest.model_fields, *_IGNORED, *_PASSED]
        meant = [
            f"{close[0]!r}" if len(unknown) == 1 else f"{u!r} -> {close[0]!r}"
            for u in unknown
            if (close := close_names(u, known))
        ]
        hint = f" (did you mean {', '.join(meant)}?)" if meant else ""
        raise GatewayError(400, f"Unrecognized request argument supplied: {', '.join(unknown)}{hint}", param=unknown[0])
    if req.modalities and set(req.modalities) != {"text"}:
        raise GatewayError(400, "only the 'text' modality is supported", param="modalities")
    tools = req.tools or []
    metadata = dict(req.metadata or {})
    if req.user:
        metadata["user"] = req.user
    job: dict[str, Any] = {
        "model": req.model,
        "messages": [_message(m, i) for i, m in enumerate(req.messages)],
        "tools": tools,
        "tenant": tenant,
        "metadata": metadata,
        # Always streamed upstream, even for stream=false: a streamed provider call is the one the
        # worker can abort when the client goes away.
        "stream": True,
    }
    limit = req.max_completion_tokens or req.max_tokens
    if limit is not None:
        job["max_tokens"] = limit
    if req.response_format and req.response_format.get("type") != "text":
        job["response_format"] = req.response_format
    if req.reasoning_effort is not None:
        job["reasoning"] = {"effort": req.reasoning_effort}
    optional = {"priority": req.priority, "concurrency_key": req.concurrency_key, "user": req.user, "cache": req.cache}
    optional.update({name: extra[name] for name in _PASSED if name in extra})
    job.update({k: v for k, v in optional.items() if v is not None})
    return job


def is_structured(req: ChatCompletionRequest) -> bool:
    """Whether the request asks for JSON (its stream is sent once validated)."""
    return bool(req.response_format) and (req.response_format or {}).get("type") in ("json_object", "json_schema")


def parse_request(data: dict[str, Any]) -> ChatCompletionRequest:
    try:
        return ChatCompletionRequest.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc) from None


# --- responses --------------------------------------------------------------------------------------


def completion_id(job_id: str) -> str:
    return "chatcmpl-" + job_id.removeprefix("job_")


def _usage(usage: Usage) -> dict[str, Any]:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_tokens},
    }


def _tool_calls(result: CompletionResult) -> list[dict[str, Any]]:
    return [call.model_dump(mode="json") for call in result.tool_calls]


def _finish(result: CompletionResult) -> str:
    return result.finish_reason or ("tool_calls" if result.tool_calls else "stop")


def completion_body(result: CompletionResult, *, model: str, created: int) -> dict[str, Any]:
    """A ``chat.completion`` object for a succeeded job."""
    message: dict[str, Any] = {
        "role": "assistant",
        "content": result.content if (result.content or not (result.tool_calls or result.refusal)) else None,
        "refusal": result.refusal,
        "annotations": [],
    }
    if result.tool_calls:
        message["tool_calls"] = _tool_calls(result)
    return {
        "id": completion_id(result.id),
        "object": "chat.completion",
        "created": created,
        "model": result.model_used or model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": logprobs_object(result.logprobs),
                "finish_reason": _finish(result),
            },
            *alternative_choices(result),
        ],
        "usage": _usage(result.usage),
        "service_tier": None,
        "system_fingerprint": None,
    }


def _dumps(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


class ChatStreamRenderer:
    """Job events -> ``chat.completion.chunk`` SSE frames."""

    prelude = b""

    def __init__(
        self, job_id: str, *, model: str, include_usage: bool, created: int | None = None, hold_content: bool = False
    ) -> None:
        self.job_id = job_id
        #: Structured output: content waits for the worker's validation (a repair restarts it).
        self.hold_content = hold_content
        self._held: list[str] = []
        self.id = completion_id(job_id)
        self.model = model
        self.include_usage = include_usage
        self.created = created or int(time.time())
        self._role_sent = False
        self._tools = 0
        self._usage: Usage | None = None
        #: Content sent so far (not held), and the run that sent it.
        self._sent = ""
        self._run: int | None = None
        #: After the answer started over (the identical job a follower shared failed and it called
        #: itself, or the job ran again): the new text so far, matched against what was sent (sent
        #: text cannot be taken back: while the new answer repeats it nothing is sent, then the rest).
        self._redo: str | None = None
        #: The new answer differed from what was sent: an error ended the stream.
        self._broken = False

    def _chunk(
        self,
        delta: dict[str, Any],
        finish: str | None = None,
        *,
        index: int = 0,
        logprobs: dict[str, Any] | None = None,
    ) -> bytes:
        chunk: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "service_tier": None,
            "system_fingerprint": None,
            "choices": [{"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}],
        }
        if self.include_usage:
            chunk["usage"] = None
        return sse_frame(_dumps(chunk))

    def _role(self, delta: dict[str, Any]) -> dict[str, Any]:
        if not self._role_sent:
            self._role_sent = True
            return {"role": "assistant", **delta}
        return delta

    def frames(self, item: Item) -> bytes:
        if self._broken:
            return b""
        if isinstance(item, FeedError):
            return self._error({"message": item.message, "type": "server_error", "param": None, "code": item.code})
        event: StreamEvent = item
        if event.type == "tool_result" or (event.type == "tool_call" and event.turn is not None):
            return b""  # the worker's own tool loop: not calls for the client to answer
        if event.type in ("start", "usage"):
            if event.type == "usage":
                self._usage = event.usage
            elif self._run is not None and event.run != self._run:
                self._held.clear()
                self._redo = "" if self._sent else None  # the job runs again: its text starts over
            self._run = event.run
            return b""
        if event.type == "delta":
            if self.hold_content:
                self._held.append(event.text)
                return b""
            return self._content(event.text)
        if event.type == "repair":
            self._held.clear()
            if self._sent and not self.hold_content:
                self._redo = ""
            return b""
        if event.type == "tool_call":
            call = event.tool_call
            delta = {
                "tool_calls": [
                    {
                        "index": self._tools,
                        "id": call.id,
                        "type": "function",
                        "function": {"name": call.function.name, "arguments": call.function.arguments},
                    }
                ]
            }
            self._tools += 1
            return self._chunk(self._role({"content": None, **delta} if not self._role_sent else delta))
        if event.type == "done":
            result = event.result
            if self._redo is not None and self._redo != self._sent:  # the new answer stopped short of it
                return self._restarted()
            out = b""
            if self._held:
                out += self._chunk(self._role({"content": "".join(self._held)}))
                self._held.clear()
            if result.refusal:
                out += self._chunk(self._role({"content": None, "refusal": result.refusal}))
            out += b"" if self._role_sent else self._chunk(self._role({"content": ""}))
            if result.logprobs is not None:  # the SDKs join each chunk's list: one chunk holds them all
                out += self._chunk({}, logprobs=logprobs_object(result.logprobs))
            for alt in result.alternatives:  # n > 1: the worker streams the first answer only
                said: dict[str, Any] = {"role": "assistant", "content": alt.content}
                out += self._chunk(said, index=alt.index, logprobs=logprobs_object(alt.logprobs))
                out += self._chunk({}, alt.finish_reason or "stop", index=alt.index)
            out += self._chunk({}, _finish(result))
            if self.include_usage:
                usage = self._usage or result.usage
                chunk = {
                    "id": self.id,
                    "object": "chat.completion.chunk",
                    "created": self.created,
                    "model": self.model,
                    "service_tier": None,
                    "system_fingerprint": None,
                    "choices": [],
                    "usage": _usage(usage),
                }
                out += sse_frame(_dumps(chunk))
            return out + b"data: [DONE]\n\n"
        if event.type == "error":
            return self._error(error_for_job(event.error, self.job_id).body()["error"])
        info = event.result.error if isinstance(event, CancelledEvent) and event.result is not None else None
        cancelled = GatewayError(
            499, info.message if info else "the job was cancelled", type="cancelled", code="cancelled"
        )
        return self._error(cancelled.body()["error"])

    def _error(self, error: dict[str, Any]) -> bytes:
        return sse_frame(_dumps({"error": error}))

    def _content(self, text: str) -> bytes:
        """A content chunk; after a restart, only what goes past the text already sent."""
        if self._redo is not None:
            self._redo += text
            if self._sent.startswith(self._redo):
                return b""  # the new answer repeats what the client has
            if not self._redo.startswith(self._sent):
                return self._restarted()
            text, self._redo = self._redo[len(self._sent) :], None
        self._sent += text
        return self._chunk(self._role({"content": text}))

    def _restarted(self) -> bytes:
        """The answer started over and differs from the text sent, which cannot be taken back."""
        self._broken = True
        return self._error(
            {
                "message": "the answer started over (the identical job it shared failed, or the job ran again) "
                "and differs from the text already streamed; request it again",
                "type": "server_error",
                "param": None,
                "code": "stream_restarted",
            }
        )

    def early_response(self, item: Item) -> Response | None:
        """Before any content: a failed or cancelled job is an HTTP error status, like OpenAI's, with
        the job's id in ``x-llmq-job-id`` as on every answer about a job that exists (a 503
        ``no_worker`` while Redis is full leaves the job queued: the id is how the caller finds it)."""
        if isinstance(item, FeedError):
            err = feed_error(item)
        elif item.type == "error":
            err = error_for_job(item.error, self.job_id)
        elif item.type == "cancelled":
            err = GatewayError(499, "the job was cancelled", type="cancelled", code="cancelled")
        else:
            return None
        err.headers["x-llmq-job-id"] = self.job_id
        return err.response()

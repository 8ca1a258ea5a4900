"""OpenAI Chat Completions as the simulator speaks it (stream and non-stream, tools, usage)."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from typing import Any

from simulator.promptcache import openai_blocks
from simulator.protocols.base import (
    ParsedRequest,
    Protocol,
    Reply,
    RequestError,
    StreamRenderer,
    ToolSpec,
    content_text,
    jstr,
    positive_int,
    request_id,
    trailing_tool_results,
)
from simulator.script import Fault, Script, ToolCall
from simulator.structured import openai_params, token_logprobs

__all__ = ["OpenAIProtocol"]

_ERRORS: dict[str, tuple[int, str, str | None, str]] = {
    # kind: (status, type, code, message)
    "429": (429, "requests", "rate_limit_exceeded", "Rate limit reached for requests per min (RPM). Please try again."),
    "429ms": (429, "tokens", "rate_limit_exceeded", "Rate limit reached for tokens per min (TPM). Please try again."),
    "quota": (
        429,
        "insufficient_quota",
        "insufficient_quota",
        "You exceeded your current quota, please check your plan and billing details.",
    ),
    "400": (400, "invalid_request_error", "invalid_value", "Invalid value for 'messages'."),
    "401": (401, "invalid_request_error", "invalid_api_key", "Incorrect API key provided: sk-sim***."),
    "403": (403, "invalid_request_error", "unsupported_country_region_territory", "Country not supported."),
    "500": (500, "server_error", None, "The server had an error while processing your request. Sorry about that!"),
    "502": (502, "server_error", None, "Bad gateway."),
    "503": (503, "server_error", None, "The engine is currently overloaded, please try again later."),
    "529": (529, "server_error", None, "The server is overloaded, please try again later."),
}
_FINISH = {"stop": "stop", "length": "length", "tool": "tool_calls", "refusal": "stop", "filter": "content_filter"}


def _error_body(message: str, kind: str, code: str | None, param: str | None = None) -> bytes:
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return json.dumps(body, indent=4).encode() + b"\n"


def _call_id(i: int) -> str:
    """A tool call's id: unique in any conversation, as the real API's are."""
    return f"call_sim{i}" + request_id("_")


class OpenAIProtocol(Protocol):
    name = "openai"
    path = "/v1/chat/completions"
    stream_content_type = "text/event-stream; charset=utf-8"

    def parse(self, payload: dict[str, Any]) -> ParsedRequest:
        if not payload.get("model"):
            raise RequestError("you must provide a model parameter")
        messages = payload.get("messages")
        if not isinstance(messages, list) or not messages:
            raise RequestError("'messages' must be a non-empty array")
        text = " ".join(content_text(m.get("content")) for m in messages if isinstance(m, dict))
        tools = [
            ToolSpec(t["function"]["name"], t["function"].get("parameters"))
            for t in payload.get("tools") or []
            if isinstance(t, dict) and isinstance(t.get("function"), dict) and "name" in t["function"]
        ]
        limit = payload.get("max_completion_tokens", payload.get("max_tokens"))
        options = payload.get("stream_options") or {}
        return ParsedRequest(
            model=str(payload["model"]),
            prompt_text=text,
            max_tokens=None if limit is None else positive_int(limit, "max_tokens"),
            stream=bool(payload.get("stream")),
            tools=tools,
            include_usage=bool(options.get("include_usage")),
            message_count=len(messages),
            tool_results=trailing_tool_results(messages),
            params=openai_params(payload, [t.name for t in tools]),
            cache_blocks=openai_blocks(payload),
        )

    def invalid(self, err: RequestError) -> Reply:
        return err.status, [("x-request-id", request_id())], _error_body(err.message, err.kind, None)

    def error(self, fault: Fault, req: ParsedRequest) -> Reply:
        headers: list[tuple[str, str]] = [("x-request-id", request_id())]
        kind = fault.kind
        if kind == "context":
            used = self.prompt_tokens(req)
            message = (
                f"This model's maximum context length is 128000 tokens. However, your messages resulted in "
                f"{max(used, 128001)} tokens. Please reduce the length of the messages."
            )
            return 400, headers, _error_body(message, "invalid_request_error", "context_length_exceeded", "messages")
        if kind == "404":
            message = f"The model `{req.base_model}` does not exist or you do not have access to it."
            return 404, headers, _error_body(message, "invalid_request_error", "model_not_found")
        if kind in _ERRORS:
            status, etype, code, message = _ERRORS[kind]
        else:  # any other status number
            status = int(kind)
            etype = "server_error" if status >= 500 else "invalid_request_error"
            code, message = None, f"Simulated HTTP {status}."
        if kind == "429":
            headers.append(("retry-after", str(int(fault.arg)) if fault.arg is not None else "1"))
        elif kind == "429ms":
            ms = fault.arg if fault.arg is not None else 500.0
            headers += [("retry-after-ms", str(int(ms))), ("retry-after", str(math.ceil(ms / 1000)))]
        return status, headers, _error_body(message, etype, code)

    def success_headers(self) -> list[tuple[str, str]]:
        return [("x-request-id", request_id())]

    def complete_body(self, req: ParsedRequest, script: Script, usage: bool) -> bytes:
        message: dict[str, object] = {"role": "assistant", "content": script.text or None, "refusal": script.refusal}
        if script.tool_calls:
            message["tool_calls"] = [
                {"id": _call_id(i), "type": "function", "function": {"name": c.name, "arguments": c.arguments_json}}
                for i, c in enumerate(script.tool_calls)
            ]
        logprobs = _logprobs(script.tokens, req.params.logprobs)
        choices = [{"index": 0, "message": message, "logprobs": logprobs, "finish_reason": _FINISH[script.finish]}]
        for i in range(1, req.params.answers):  # n > 1: every answer the same text
            other = {"role": "assistant", "content": script.text, "refusal": None}
            choices.append(
                {"index": i, "message": other, "logprobs": logprobs, "finish_reason": _FINISH[script.finish]}
            )
        body: dict[str, object] = {
            "id": _completion_id(),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": req.base_model,
            "choices": choices,
        }
        if usage:
            body["usage"] = _usage(script, req.params.answers)
        body["system_fingerprint"] = "fp_sim"
        return json.dumps(body).encode()

    def open_stream(self, req: ParsedRequest, script: Script) -> StreamRenderer:
        if req.params.answers > 1 or req.params.logprobs is not None:
            return _SamplingStream(req, script)
        return _OpenAIStream(req, script)


class _OpenAIStream(StreamRenderer):
    __slots__ = (
        "_answers",
        "_head",
        "_post",
        "_pre",
        "_script",
        "_tok_post",
        "_tok_pre",
        "_usage_field",
        "_wants_usage",
    )

    def __init__(self, req: ParsedRequest, script: Script) -> None:
        self._script = script
        self._answers = req.params.answers
        self._wants_usage = req.include_usage
        self._usage_field = b',"usage":null' if req.include_usage else b""
        self._head = b'data: {"id":"%s","object":"chat.completion.chunk","created":%d,"model":%s,%s' % (
            _completion_id().encode(),
            int(time.time()),
            jstr(req.base_model),
            b'"system_fingerprint":"fp_sim",',
        )
        self._pre = self._head + b'"choices":[{"index":0,"delta":'
        self._post = b',"logprobs":null,"finish_reason":null}]' + self._usage_field + b"}\n\n"
        self._tok_pre = self._pre + b'{"content":'
        self._tok_post = b"}" + self._post

    def _chunk(self, delta: dict[str, object]) -> bytes:
        return self._pre + json.dumps(delta, separators=(",", ":")).encode() + self._post

    def head(self) -> bytes:
        return self._pre + b'{"role":"assistant","content":"","refusal":null}' + self._post

    def token(self, text: str) -> bytes:
        return self._tok_pre + jstr(text) + self._tok_post

    def tool_calls(self, calls: list[ToolCall]) -> bytes:
        out = []
        for i, call in enumerate(calls):
            first = {
                "index": i,
                "id": _call_id(i),
                "type": "function",
                "function": {"name": call.name, "arguments": ""},
            }
            out.append(self._chunk({"tool_calls": [first]}))
            args = call.arguments_json
            half = len(args) // 2 if len(args) > 2 else len(args)
            for piece in (args[:half], args[half:]):
                if piece:
                    out.append(self._chunk({"tool_calls": [{"index": i, "function": {"arguments": piece}}]}))
        return b"".join(out)

    def tail(self, usage: bool) -> bytes:
        finish = _FINISH[self._script.finish]
        refusal = self._chunk({"refusal": self._script.refusal}) if self._script.refusal else b""
        out = (
            refusal
            + self._pre
            + b'{},"logprobs":null,"finish_reason":"'
            + finish.encode()
            + b'"}]'
            + self._usage_field
            + b"}\n\n"
        )
        if usage and self._wants_usage:
            # the usage chunk is the finish chunk's prefix with an empty choices list
            usage_json = json.dumps(_usage(self._script, self._answers)).encode()
            out += self._head + b'"choices":[],"usage":' + usage_json + b"}\n\n"
        return out + b"data: [DONE]\n\n"

    def error(self) -> bytes:
        message = "The server had an error while processing your request. Sorry about that!"
        payload = {"error": {"message": message, "type": "server_error", "param": None, "code": None}}
        return b"data: " + json.dumps(payload).encode() + b"\n\n"

    def malformed(self) -> bytes:
        return self._tok_pre + b'"bro\n\n'


class _SamplingStream(_OpenAIStream):
    """A stream with ``logprobs`` on each token chunk, and with ``n`` > 1 the other choices' chunks
    (their text, then their finish) before the first choice's finish."""

    __slots__ = ("_at", "_logprobs", "_top")

    def __init__(self, req: ParsedRequest, script: Script) -> None:
        super().__init__(req, script)
        self._top = req.params.logprobs
        self._logprobs = _logprobs(script.tokens, self._top)
        self._at = 0

    def _choice(self, index: int, delta: dict[str, object], logprobs: object, finish: str | None) -> bytes:
        choice = {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
        return self._head + b'"choices":[' + json.dumps(choice).encode() + b"]" + self._usage_field + b"}\n\n"

    def token(self, text: str) -> bytes:
        logprobs = None
        if self._logprobs is not None:
            logprobs = {"content": self._logprobs["content"][self._at : self._at + 1], "refusal": None}
        self._at += 1
        return self._choice(0, {"content": text}, logprobs, None)

    def tail(self, usage: bool) -> bytes:
        finish = _FINISH[self._script.finish]
        others = b"".join(
            self._choice(i, {"role": "assistant", "content": self._script.text}, self._logprobs, None)
            + self._choice(i, {}, None, finish)
            for i in range(1, self._answers)
        )
        return others + super().tail(usage)


def _logprobs(tokens: Sequence[str], top: int | None) -> dict[str, Any] | None:
    """A choice's ``logprobs`` object for ``tokens`` (None: not asked for)."""
    if top is None:
        return None
    content = [
        {
            "token": token,
            "logprob": logprob,
            "bytes": list(token.encode()),
            "top_logprobs": [{"token": t, "logprob": lp, "bytes": list(t.encode())} for t, lp in tops],
        }
        for token, logprob, tops in token_logprobs(tokens, top)
    ]
    return {"content": content, "refusal": None}


def _completion_id() -> str:
    return "chatcmpl-" + request_id("sim")


def _usage(script: Script, answers: int = 1) -> dict[str, object]:
    completion = script.completion_tokens * answers
    return {
        "prompt_tokens": script.prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": script.prompt_tokens + completion,
        "prompt_tokens_details": {"cached_tokens": script.cached_tokens, "audio_tokens": 0},
    }

"""OpenAI Chat Completions as the simulator speaks it (stream and non-stream, tools, usage)."""

from __future__ import annotations

import json
import time

from simulator.protocols.base import ParsedRequest, Protocol
from simulator.script import Fault, Script, estimate_tokens

__all__ = ["OpenAIProtocol"]

_ERRORS: dict[str, tuple[int, str, str, str]] = {
    # kind: (status, type, code, message)
    "429": (429, "requests", "rate_limit_exceeded", "Rate limit reached for requests per min (RPM). Please try again."),
    "429ms": (429, "tokens", "rate_limit_exceeded", "Rate limit reached for tokens per min (TPM)."),
    "quota": (
        429,
        "insufficient_quota",
        "insufficient_quota",
        "You exceeded your current quota, please check your plan and billing details.",
    ),
    "400": (400, "invalid_request_error", "invalid_value", "Invalid value for 'messages'."),
    "context": (
        400,
        "invalid_request_error",
        "context_length_exceeded",
        "This model's maximum context length is 128000 tokens. Please reduce the length of the messages.",
    ),
    "401": (401, "invalid_request_error", "invalid_api_key", "Incorrect API key provided."),
    "403": (403, "invalid_request_error", "unsupported_country_region_territory", "Country not supported."),
    "404": (
        404,
        "invalid_request_error",
        "model_not_found",
        "The model does not exist or you do not have access to it.",
    ),
    "500": (500, "server_error", "server_error", "The server had an error while processing your request."),
    "502": (502, "server_error", "bad_gateway", "Bad gateway."),
    "503": (503, "server_error", "service_unavailable", "The engine is currently overloaded, please try again later."),
    "529": (529, "overloaded_error", "overloaded", "Overloaded"),
}


def _chunk_id(req: ParsedRequest) -> str:
    return "chatcmpl-sim" + format(abs(hash(req.prompt_text)) % 10**12, "012d")


class OpenAIProtocol(Protocol):
    path = "/v1/chat/completions"
    stream_content_type = "text/event-stream; charset=utf-8"

    def parse(self, payload: dict) -> ParsedRequest:
        messages = payload.get("messages")
        if not isinstance(messages, list) or not messages:
            raise ValueError("'messages' must be a non-empty array")
        text = " ".join(str(m.get("content") or "") for m in messages if isinstance(m, dict))
        tools = [t["function"]["name"] for t in payload.get("tools") or [] if isinstance(t, dict) and "function" in t]
        options = payload.get("stream_options") or {}
        return ParsedRequest(
            model=str(payload.get("model") or ""),
            prompt_text=text,
            max_tokens=int(payload.get("max_tokens") or payload.get("max_completion_tokens") or 16),
            stream=bool(payload.get("stream")),
            tool_names=tools,
            include_usage=bool(options.get("include_usage")),
            message_count=len(messages),
        )

    def error(self, fault: Fault) -> tuple[int, list[tuple[str, str]], bytes]:
        status, kind, code, message = _ERRORS.get(fault.kind, _ERRORS["500"])
        headers: list[tuple[str, str]] = [("x-request-id", f"req_sim_{time.monotonic_ns()}")]
        if fault.kind == "429":
            headers.append(("retry-after", str(int(fault.arg)) if fault.arg is not None else "1"))
        elif fault.kind == "429ms":
            headers.append(("retry-after-ms", str(int(fault.arg if fault.arg is not None else 500))))
        body = json.dumps({"error": {"message": message, "type": kind, "param": None, "code": code}}, indent=4)
        return status, headers, body.encode() + b"\n"

    def complete_body(self, req: ParsedRequest, script: Script, finish: str) -> bytes:
        message: dict[str, object] = {"role": "assistant", "content": script.text or None, "refusal": None}
        if script.tool_call:
            name, args = script.tool_call
            message["tool_calls"] = [
                {"id": "call_sim0", "type": "function", "function": {"name": name, "arguments": args}}
            ]
        return json.dumps(
            {
                "id": _chunk_id(req),
                "object": "chat.completion",
                "created": int(time.time()),
                "model": req.model,
                "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
                "usage": _usage(script),
            }
        ).encode()

    def _chunk(self, req: ParsedRequest, delta: dict, finish: str | None = None) -> bytes:
        payload = {
            "id": _chunk_id(req),
            "object": "chat.completion.chunk",
            "created": 0,
            "model": req.model,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }
        return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"

    def stream_head(self, req: ParsedRequest, script: Script) -> bytes:
        return self._chunk(req, {"role": "assistant", "content": "", "refusal": None})

    def stream_token(self, req: ParsedRequest, token: str) -> bytes:
        return self._chunk(req, {"content": token})

    def stream_tool_call(self, req: ParsedRequest, name: str, arguments: str) -> bytes:
        half = len(arguments) // 2
        first = {"index": 0, "id": "call_sim0", "type": "function", "function": {"name": name, "arguments": ""}}
        return (
            self._chunk(req, {"tool_calls": [first]})
            + self._chunk(req, {"tool_calls": [{"index": 0, "function": {"arguments": arguments[:half]}}]})
            + self._chunk(req, {"tool_calls": [{"index": 0, "function": {"arguments": arguments[half:]}}]})
        )

    def stream_tail(self, req: ParsedRequest, script: Script, finish: str, usage: bool) -> bytes:
        out = self._chunk(req, {}, finish)
        if usage and req.include_usage:
            payload = {
                "id": _chunk_id(req),
                "object": "chat.completion.chunk",
                "created": 0,
                "model": req.model,
                "choices": [],
                "usage": _usage(script),
            }
            out += b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"
        return out + b"data: [DONE]\n\n"

    def stream_error(self, req: ParsedRequest, fault: Fault) -> bytes:
        payload = {
            "error": {"message": "The server had an error while processing your request.", "type": "server_error"}
        }
        return b"data: " + json.dumps(payload).encode() + b"\n\n"


def _usage(script: Script) -> dict[str, int]:
    return {
        "prompt_tokens": script.prompt_tokens,
        "completion_tokens": script.completion_tokens,
        "total_tokens": script.prompt_tokens + script.completion_tokens,
    }


def prompt_tokens_for(req: ParsedRequest) -> int:
    return estimate_tokens(req.prompt_text) + 3 * req.message_count + 3

"""Google Gemini's native API as the simulator speaks it: ``/v1beta/models/{model}:generateContent``
and ``:streamGenerateContent?alt=sse`` (the same paths under a Vertex AI ``.../publishers/google``
prefix are served too).

Streams are SSE events separated by CRLF CRLF, no ``event:`` lines and no terminator: the last
chunk carries ``finishReason``; every chunk repeats ``usageMetadata``. Tool calls are
``functionCall`` parts (args as objects, no ids), the first with a ``thoughtSignature``; thinking
(``thinkingConfig.includeThoughts``) comes as ``"thought": true`` parts. Errors are
``{"error": {"code", "message", "status", "details"}}``; a 429 is ``RESOURCE_EXHAUSTED`` with a
``google.rpc.RetryInfo`` ``retryDelay`` (no ``retry-after`` header, as the real API).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import unquote

from simulator.protocols.base import (
    ParsedRequest,
    Protocol,
    Reply,
    RequestError,
    StreamRenderer,
    ToolSpec,
    jstr,
    positive_int,
    request_id,
)
from simulator.request import RequestParams
from simulator.script import Fault, Script, ToolCall
from simulator.structured import THINKING, gemini_sampling, stop_sequences, token_logprobs

__all__ = ["GeminiProtocol"]

_PATH = re.compile(r"^(?:/v1beta|/v1|/v1beta1/projects/[^/]+/locations/[^/]+/publishers/google)/models/([^/:]+):(\w+)$")
_ERRORS: dict[str, tuple[int, str, str]] = {
    "429": (429, "RESOURCE_EXHAUSTED", "You exceeded your current quota, please check your plan and billing details."),
    "429ms": (
        429,
        "RESOURCE_EXHAUSTED",
        "You exceeded your current quota, please check your plan and billing details.",
    ),
    "quota": (429, "RESOURCE_EXHAUSTED", "Quota exceeded for quota metric 'Generate Content API requests per day'."),
    "context": (400, "INVALID_ARGUMENT", "The input token count exceeds the maximum number of tokens allowed 1048576."),
    "400": (400, "INVALID_ARGUMENT", "Invalid JSON payload received."),
    "401": (400, "INVALID_ARGUMENT", "API key not valid. Please pass a valid API key."),
    "403": (403, "PERMISSION_DENIED", "Permission denied on resource project."),
    "500": (
        500,
        "INTERNAL",
        "An internal error has occurred. Please retry or report in https://developers.generativeai.google/guide/troubleshooting",
    ),
    "502": (502, "UNAVAILABLE", "Bad gateway."),
    "503": (503, "UNAVAILABLE", "The model is overloaded. Please try again later."),
    "529": (503, "UNAVAILABLE", "The model is overloaded. Please try again later."),
}
_FINISH = {"stop": "STOP", "length": "MAX_TOKENS", "tool": "STOP", "refusal": "STOP", "filter": "SAFETY"}
_SIGNATURE = "c2ltdWxhdGVkIHRob3VnaHQgc2lnbmF0dXJl"  # base64("simulated thought signature")


def _error_body(status: int, code: str, message: str, details: list[dict[str, object]] | None = None) -> bytes:
    error: dict[str, object] = {"code": status, "message": message, "status": code}
    if details:
        error["details"] = details
    return json.dumps({"error": error}, indent=2).encode() + b"\n"


def _text(parts: object) -> str:
    out = []
    for part in parts if isinstance(parts, list) else []:
        if isinstance(part, dict):
            if isinstance(part.get("text"), str):
                out.append(part["text"])
            elif isinstance(part.get("functionResponse"), dict):
                out.append(json.dumps(part["functionResponse"].get("response")))
            elif isinstance(part.get("functionCall"), dict):
                out.append(json.dumps(part["functionCall"].get("args")))
    return " ".join(out)


class GeminiProtocol(Protocol):
    name = "gemini"
    path = "/v1beta/models/{model}:generateContent"
    stream_content_type = "text/event-stream"
    required_headers = ()

    def route(self, path: str) -> dict[str, str] | None:
        match = _PATH.match(path)
        if match is None or match.group(2) not in ("generateContent", "streamGenerateContent"):
            return None
        return {"model": unquote(match.group(1)), "method": match.group(2)}

    def check(self, headers: Mapping[str, str]) -> None:
        if not headers.get("x-goog-api-key") and not headers.get("authorization"):
            raise RequestError("Method doesn't allow unregistered callers. Please use API Key.", status=403)

    def parse(self, payload: dict[str, Any]) -> ParsedRequest:
        raise RequestError("use /v1beta/models/{model}:generateContent")

    def parse_routed(self, payload: dict[str, Any], route: dict[str, str], query: dict[str, str]) -> ParsedRequest:
        contents = payload.get("contents")
        if not isinstance(contents, list) or not contents:
            raise RequestError("* GenerateContentRequest.contents: contents is not specified")
        for c in contents:
            if not isinstance(c, dict) or c.get("role", "user") not in ("user", "model"):
                raise RequestError("Please use a valid role: user, model.")
        config = payload.get("generationConfig") or {}
        limit = config.get("maxOutputTokens")
        declarations = [
            d
            for tool in payload.get("tools") or []
            if isinstance(tool, dict)
            for d in tool.get("functionDeclarations") or []
            if isinstance(d, dict) and d.get("name")
        ]
        tools = [ToolSpec(d["name"], d.get("parameters") or d.get("parametersJsonSchema")) for d in declarations]
        params = RequestParams(stop=stop_sequences(config.get("stopSequences"), "stopSequences", 5))
        gemini_sampling(config, params)
        if config.get("responseMimeType") == "application/json":
            params.schema = config.get("responseSchema") or config.get("responseJsonSchema") or {"type": "object"}
        calling = ((payload.get("toolConfig") or {}).get("functionCallingConfig") or {}).get("mode")
        if calling == "ANY" and tools:
            allowed = ((payload.get("toolConfig") or {}).get("functionCallingConfig") or {}).get("allowedFunctionNames")
            params.tool_required = allowed[0] if allowed else "*"
        thinking = config.get("thinkingConfig") or {}
        params.thinking = bool(thinking.get("includeThoughts")) and thinking.get("thinkingBudget", -1) != 0
        last = contents[-1]
        results = [
            json.dumps(p["functionResponse"].get("response"))
            for p in last.get("parts") or []
            if isinstance(p, dict) and isinstance(p.get("functionResponse"), dict)
        ]
        system = payload.get("systemInstruction") or {}
        text = " ".join([_text(system.get("parts")), *(_text(c.get("parts")) for c in contents)])
        return ParsedRequest(
            model=route["model"],
            prompt_text=text.strip(),
            max_tokens=None if limit is None else positive_int(limit, "generationConfig.maxOutputTokens"),
            stream=route["method"] == "streamGenerateContent",
            tools=tools,
            message_count=len(contents),
            tool_results=results,
            params=params,
        )

    def invalid(self, err: RequestError) -> Reply:
        code = {400: "INVALID_ARGUMENT", 403: "PERMISSION_DENIED", 404: "NOT_FOUND"}.get(err.status, "INVALID_ARGUMENT")
        return err.status, [], _error_body(err.status, code, err.message)

    def error(self, fault: Fault, req: ParsedRequest) -> Reply:
        kind = fault.kind
        if kind == "404":
            message = (
                f"models/{req.base_model} is not found for API version v1beta, or is not supported for generateContent."
            )
            return 404, [], _error_body(404, "NOT_FOUND", message)
        status, code, message = _ERRORS.get(kind) or (int(kind), "UNKNOWN", f"Simulated HTTP {kind}.")
        details: list[dict[str, object]] = []
        if kind in ("429", "429ms"):
            seconds = (fault.arg if fault.arg is not None else 1.0) if kind == "429" else (fault.arg or 500.0) / 1000
            details.append({"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": f"{seconds:g}s"})
        elif kind == "quota":
            violation = {"quotaId": "GenerateRequestsPerDayPerProjectPerModel", "quotaValue": "250"}
            details.append({"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [violation]})
        elif kind == "401":
            details.append(
                {
                    "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                    "reason": "API_KEY_INVALID",
                    "domain": "googleapis.com",
                }
            )
        return status, [], _error_body(status, code, message, details)

    def complete_body(self, req: ParsedRequest, script: Script, usage: bool) -> bytes:
        parts: list[dict[str, object]] = []
        if script.thinking:
            parts.append({"text": script.thinking, "thought": True})
        if script.text:
            parts.append({"text": script.text})
        parts += _call_parts(script.tool_calls)
        finish = _FINISH[script.finish]
        candidates: list[dict[str, object]] = [
            {"content": {"parts": parts, "role": "model"}, "finishReason": finish, "index": 0}
        ]
        for i in range(1, req.params.answers):  # candidateCount > 1: every candidate the same text
            candidates.append(
                {"content": {"parts": [{"text": script.text}], "role": "model"}, "finishReason": finish, "index": i}
            )
        logprobs = _logprobs(script.tokens, req.params.logprobs)
        if logprobs is not None:
            for candidate in candidates:
                candidate["logprobsResult"] = logprobs
        body: dict[str, object] = {
            "candidates": candidates,
            "modelVersion": req.base_model,
            "responseId": request_id("gmsim"),
        }
        if usage:
            body["usageMetadata"] = _usage(script, answers=req.params.answers)
        return json.dumps(body, indent=2).encode()

    def open_stream(self, req: ParsedRequest, script: Script) -> StreamRenderer:
        if req.params.answers > 1 or req.params.logprobs is not None:
            return _SamplingStream(req, script)
        return _GeminiStream(req, script)


def _logprobs(tokens: Sequence[str], top: int | None) -> dict[str, object] | None:
    """A candidate's ``logprobsResult`` for ``tokens`` (None: not asked for)."""
    if top is None:
        return None
    steps = token_logprobs(tokens, top)
    return {
        "topCandidates": [
            {"candidates": [{"token": t, "tokenId": 1000 + j, "logProbability": lp} for j, (t, lp) in enumerate(tops)]}
            for _, _, tops in steps
        ],
        "chosenCandidates": [{"token": t, "tokenId": 1000, "logProbability": lp} for t, lp, _ in steps],
    }


def _call_parts(calls: list[ToolCall]) -> list[dict[str, object]]:
    parts: list[dict[str, object]] = []
    for i, call in enumerate(calls):
        part: dict[str, object] = {"functionCall": {"name": call.name, "args": call.arguments}}
        if i == 0:
            part["thoughtSignature"] = _SIGNATURE
        parts.append(part)
    return parts


def _usage(script: Script, completion: int | None = None, *, answers: int = 1) -> dict[str, object]:
    thoughts = len(THINKING.split()) if script.thinking else 0
    candidates = ((script.completion_tokens if completion is None else completion) - thoughts) * answers
    out: dict[str, object] = {
        "promptTokenCount": script.prompt_tokens,
        "candidatesTokenCount": max(candidates, 0),
        "totalTokenCount": script.prompt_tokens + max(candidates, 0) + thoughts,
    }
    if thoughts:
        out["thoughtsTokenCount"] = thoughts
    if script.cached_tokens:
        out["cachedContentTokenCount"] = script.cached_tokens
    return out


class _GeminiStream(StreamRenderer):
    __slots__ = ("_count", "_post", "_pre", "_script", "_suffix")

    def __init__(self, req: ParsedRequest, script: Script) -> None:
        self._script = script
        self._count = 0
        self._pre = b'data: {"candidates": [{"content": {"parts": [{"text": '
        self._post = b'}],"role": "model"},"index": 0}],"usageMetadata": '
        self._suffix = (
            b',"modelVersion": ' + jstr(req.base_model) + b',"responseId": ' + jstr(request_id("gmsim")) + b"}\r\n\r\n"
        )

    def _usage_bytes(self) -> bytes:
        return json.dumps(_usage(self._script, self._count)).encode()

    def head(self) -> bytes:
        if not self._script.thinking:
            return b""
        thought = b'data: {"candidates": [{"content": {"parts": [{"text": ' + jstr(self._script.thinking)
        return thought + b',"thought": true' + self._post + self._usage_bytes() + self._suffix

    def token(self, text: str) -> bytes:
        self._count += 1
        return self._pre + jstr(text) + self._post + self._usage_bytes() + self._suffix

    def tool_calls(self, calls: list[ToolCall]) -> bytes:
        parts = json.dumps(_call_parts(calls)).encode()
        return (
            b'data: {"candidates": [{"content": {"parts": '
            + parts
            + b',"role": "model"},"index": 0}],"usageMetadata": '
            + self._usage_bytes()
            + self._suffix
        )

    def tail(self, usage: bool) -> bytes:
        finish = _FINISH[self._script.finish].encode()
        meta = json.dumps(_usage(self._script)).encode() if usage else b"{}"
        return (
            b'data: {"candidates": [{"content": {"parts": [{"text": ""}],"role": "model"},"finishReason": "'
            + finish
            + b'","index": 0}],"usageMetadata": '
            + meta
            + self._suffix
        )

    def error(self) -> bytes:
        payload = {"error": {"code": 500, "message": "An internal error has occurred.", "status": "INTERNAL"}}
        return b"data: " + json.dumps(payload).encode() + b"\r\n\r\n"

    def malformed(self) -> bytes:
        return self._pre + b'"bro\r\n\r\n'


class _SamplingStream(_GeminiStream):
    """A stream with each chunk's ``logprobsResult``, and with ``candidateCount`` > 1 the other
    candidates' chunks (their text and finish) before the first's finish."""

    __slots__ = ("_answers", "_logprobs", "_tokens")

    def __init__(self, req: ParsedRequest, script: Script) -> None:
        super().__init__(req, script)
        self._answers = req.params.answers
        self._tokens = list(script.tokens)
        self._logprobs = req.params.logprobs

    def _chunk(self, candidate: dict[str, object], usage: dict[str, object]) -> bytes:
        return (
            b'data: {"candidates": ['
            + json.dumps(candidate).encode()
            + b'],"usageMetadata": '
            + json.dumps(usage).encode()
            + self._suffix
        )

    def token(self, text: str) -> bytes:
        self._count += 1
        candidate: dict[str, object] = {"content": {"parts": [{"text": text}], "role": "model"}, "index": 0}
        logprobs = _logprobs([text], self._logprobs)
        if logprobs is not None:
            candidate["logprobsResult"] = logprobs
        return self._chunk(candidate, _usage(self._script, self._count))

    def tail(self, usage: bool) -> bytes:
        finish = _FINISH[self._script.finish]
        out = b""
        for i in range(1, self._answers):
            candidate: dict[str, object] = {
                "content": {"parts": [{"text": self._script.text}], "role": "model"},
                "finishReason": finish,
                "index": i,
            }
            logprobs = _logprobs(self._tokens, self._logprobs)
            if logprobs is not None:
                candidate["logprobsResult"] = logprobs
            out += self._chunk(candidate, _usage(self._script, self._count))
        if not usage:
            return out + super().tail(usage)
        meta = json.dumps(_usage(self._script, answers=self._answers)).encode()
        return out + (
            b'data: {"candidates": [{"content": {"parts": [{"text": ""}],"role": "model"},"finishReason": "'
            + finish.encode()
            + b'","index": 0}],"usageMetadata": '
            + meta
            + self._suffix
        )

"""Conformance cases: load the recorded files, serve one over real HTTP, run our provider on it.

Test helper (not collected) for ``test_conformance.py``; the expectations live there.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.replay_server import ReplayServer, Reply
from workers.contract import Message
from workers.llm._http import HTTPClient
from workers.llm.anthropic import AnthropicProvider
from workers.llm.base import ChatRequest, ChatStream, Completion, Provider
from workers.llm.errors import LLMQError
from workers.llm.ollama import OllamaProvider
from workers.llm.openai import OpenAIProvider

__all__ = ["API_KEY", "CONFORMANCE", "Case", "Outcome", "assert_no_key", "error_files", "run_case", "transcripts"]

CONFORMANCE = Path(
    os.environ.get("LLMQ_CONFORMANCE_DIR") or Path(__file__).parents[2].parent / "shared" / "conformance"
)
API_KEY = "sk-llmq-conformance-0123456789abcdef"
ENDPOINTS = {"openai": "/v1/chat/completions", "anthropic": "/v1/messages", "ollama": "/api/chat"}


@dataclass
class Case:
    provider: str
    name: str
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    expected: dict[str, Any]
    stream: bool
    request_model: str


def _case(meta: dict[str, Any], name: str, body: bytes, stream: bool) -> Case:
    summary = (meta.get("request") or {}).get("body_summary") or {}
    response = meta["response"]
    headers = [(k, v) for k, v in response["headers"]]
    model = summary.get("model") or "test-model"
    return Case(meta["provider"], name, response["status"], headers, body, meta["expected"], stream, model)


def transcripts() -> Iterator[Any]:
    """One case per ``transcripts/<provider>/<name>.expected.json`` (+ its body file)."""
    for sidecar in sorted(CONFORMANCE.glob("transcripts/*/*.expected.json")):
        meta = json.loads(sidecar.read_text(encoding="utf-8"))
        body = (sidecar.parent / meta["body_file"]).read_bytes()
        case = _case(meta, sidecar.name.removesuffix(".expected.json"), body, meta["kind"] == "stream")
        yield pytest.param(case, id=f"{case.provider}/{case.name}")


def error_files() -> Iterator[Any]:
    """Two cases per ``errors/<provider>/<name>.json`` (read whole and as a stream); one for a 200."""
    for path in sorted(CONFORMANCE.glob("errors/*/*.json")):
        meta = json.loads(path.read_text(encoding="utf-8"))
        for mode in ("complete",) if meta["response"]["status"] < 300 else ("complete", "stream"):
            case = _case(meta, path.stem, meta["response"]["body"].encode("utf-8"), mode == "stream")
            yield pytest.param(case, id=f"{case.provider}/{case.name}[{mode}]")


def make_provider(name: str, http: HTTPClient, base: str) -> Provider:
    if name == "openai":
        return OpenAIProvider(http, api_key=API_KEY, base_url=f"{base}/v1")
    if name == "anthropic":
        return AnthropicProvider(http, api_key=API_KEY, base_url=base)
    if name == "ollama":
        return OllamaProvider(http, host=base, api_key=API_KEY)
    raise AssertionError(f"no provider for {name!r}")


@dataclass
class Outcome:
    completion: Completion | None
    stream: ChatStream | None
    error: LLMQError | None


def run_case(case: Case, server: ReplayServer, http: HTTPClient) -> Outcome:
    declared = [int(v) for k, v in case.headers if k.lower() == "content-length"]
    assert all(n == len(case.body) for n in declared), f"{case.name}: Content-Length {declared} != {len(case.body)}"
    key = f"{case.provider}-{case.name}-{'s' if case.stream else 'c'}"
    base = server.add(key, Reply(case.status, case.headers, case.body))
    provider = make_provider(case.provider, http, base)
    request = ChatRequest(model=case.request_model, messages=[Message(role="user", content="hi")], max_tokens=64)
    stream: ChatStream | None = None
    try:
        if case.stream:
            stream = provider.stream(request)
            with stream:
                for _ in stream:
                    pass
            outcome = Outcome(stream.to_completion(), stream, None)
        else:
            outcome = Outcome(provider.complete(request), None, None)
    except LLMQError as exc:
        outcome = Outcome(stream.to_completion() if stream else None, stream, exc)
    check_request(case, server.requests[key])
    return outcome


def check_request(case: Case, captured: list[Any]) -> None:
    assert len(captured) == 1, "exactly one upstream request"
    request = captured[0]
    assert (request.method, request.path) == ("POST", ENDPOINTS[case.provider])
    body = json.loads(request.body)
    assert body["model"] == case.request_model
    if case.provider == "openai":
        assert request.headers["authorization"] == f"Bearer {API_KEY}"
        assert body.get("stream", False) is case.stream
        if case.stream:
            assert body["stream_options"] == {"include_usage": True}
    elif case.provider == "anthropic":
        assert request.headers["x-api-key"] == API_KEY
        assert request.headers["anthropic-version"]
        assert body["max_tokens"] == 64
        assert body.get("stream", False) is case.stream
    else:
        assert body["stream"] is case.stream
        assert body["options"]["num_predict"] == 64


def assert_no_key(outcome: Outcome, logs: str) -> None:
    """The API key must not leak into errors, results or logs."""
    texts = [logs]
    if outcome.error is not None:
        texts += [str(outcome.error), repr(outcome.error.args)]
    if outcome.completion is not None:
        texts.append(repr(outcome.completion))
    assert not any(API_KEY in t for t in texts)

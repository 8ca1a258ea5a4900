"""Conformance cases: load the recorded files, serve one over real HTTP, run our provider on it.

Test helper (not collected) for ``test_conformance.py``; the expectations live there.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import pytest

from tests.support.replay_server import ReplayServer, Reply
from workers.contract import Message, RequestParams
from workers.llm.anthropic import AnthropicProvider
from workers.llm.aws import load_aws
from workers.llm.azure import AzureOpenAIProvider
from workers.llm.base import ChatRequest, ChatStream, Completion, Provider
from workers.llm.bedrock import BedrockProvider
from workers.llm.errors import LLMQError
from workers.llm.gemini import GeminiProvider
from workers.llm.httpclient import HTTPClient
from workers.llm.ollama import OllamaProvider
from workers.llm.openai import OpenAIProvider

__all__ = ["API_KEY", "CONFORMANCE", "Case", "Outcome", "assert_no_key", "error_files", "run_case", "transcripts"]


def _conformance_dir() -> Path:
    """The recorded provider responses: ``LLMQ_CONFORMANCE_DIR``, else the nearest ``shared/conformance``
    beside the checkout or one of its parents (``../shared`` of a clone; ``../../shared`` of a worktree
    kept in a folder of worktrees)."""
    if os.environ.get("LLMQ_CONFORMANCE_DIR"):
        return Path(os.environ["LLMQ_CONFORMANCE_DIR"])
    checkout = Path(__file__).resolve().parents[2]
    for parent in checkout.parents:
        if (parent / "shared" / "conformance").is_dir():
            return parent / "shared" / "conformance"
    return checkout.parent / "shared" / "conformance"


CONFORMANCE = _conformance_dir()
API_KEY = "sk-llmq-conformance-0123456789abcdef"
#: Signing credentials of the Bedrock cases (the secret must not leak either).
AWS_KEY_ID, AWS_SECRET = "AKIDLLMQCONFORMANCE0", "llmq-conformance-aws-secret-0123456789abcdef"
AZURE_API_VERSION = "2024-12-01-preview"
ENDPOINTS = {
    "openai": "/v1/chat/completions",
    "openai-compatible": "/v1/chat/completions",
    "azure": "/openai/deployments/{model}/chat/completions?api-version=" + AZURE_API_VERSION,
    "anthropic": "/v1/messages",
    "ollama": "/api/chat",
    "gemini": "/v1beta/models/{model}:generateContent",
    "gemini-stream": "/v1beta/models/{model}:streamGenerateContent?alt=sse",
    "bedrock": "/model/{model}/converse",
    "bedrock-stream": "/model/{model}/converse-stream",
}


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
    model = summary.get("model") or _model_in_url(str((meta.get("request") or {}).get("url") or "")) or "test-model"
    return Case(meta["provider"], name, response["status"], headers, body, meta["expected"], stream, model)


def _model_in_url(url: str) -> str | None:
    """The model a Gemini (``/models/<m>:...``) or Bedrock (``/model/<m>/...``) request names in its path."""
    match = re.search(r"/models/([^/:?<>]+):", url) or re.search(r"/model/([^/?<>]+)/converse", url)
    return unquote(match.group(1)) if match else None


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
    if name == "openai-compatible":
        return OpenAIProvider(http, api_key=API_KEY, base_url=f"{base}/v1", name=name, key_env="COMPAT_API_KEY")
    if name == "azure":
        return AzureOpenAIProvider(http, api_key=API_KEY, base_url=base, api_version=AZURE_API_VERSION)
    if name == "anthropic":
        return AnthropicProvider(http, api_key=API_KEY, base_url=base)
    if name == "ollama":
        return OllamaProvider(http, host=base, api_key=API_KEY)
    if name == "gemini":
        return GeminiProvider(http, api_key=API_KEY, base_url=f"{base}/v1beta")
    if name == "bedrock":
        aws = load_aws(name)
        credentials = aws.static_credentials(AWS_KEY_ID, AWS_SECRET)
        return BedrockProvider(http, aws=aws, region="us-east-1", base_url=base, credentials=credentials)
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
    model = case.request_model
    request = ChatRequest(messages=[Message(role="user", content="hi")], params=RequestParams(max_tokens=64))
    stream: ChatStream | None = None
    try:
        if case.stream:
            stream = provider.stream(model, request)
            with stream:
                for _ in stream:
                    pass
            outcome = Outcome(stream.to_completion(), stream, None)
        else:
            outcome = Outcome(provider.complete(model, request), None, None)
    except LLMQError as exc:
        outcome = Outcome(stream.to_completion() if stream else None, stream, exc)
    check_request(case, server.requests[key])
    return outcome


def check_request(case: Case, captured: list[Any]) -> None:
    assert len(captured) == 1, "exactly one upstream request"
    request = captured[0]
    endpoint = ENDPOINTS.get(f"{case.provider}-stream" if case.stream else "", ENDPOINTS[case.provider])
    model = quote(case.request_model, safe="")
    assert (request.method, request.path) == ("POST", endpoint.format(model=model))
    body = json.loads(request.body)
    if case.provider == "gemini":
        assert request.headers["x-goog-api-key"] == API_KEY
        assert body["contents"] == [{"role": "user", "parts": [{"text": "hi"}]}]
        assert body["generationConfig"]["maxOutputTokens"] == 64
        return
    if case.provider == "bedrock":
        assert request.headers["authorization"].startswith(f"AWS4-HMAC-SHA256 Credential={AWS_KEY_ID}/")
        assert "/us-east-1/bedrock/aws4_request" in request.headers["authorization"]
        assert request.headers["x-amz-date"]
        assert body["messages"] == [{"role": "user", "content": [{"text": "hi"}]}]
        assert body["inferenceConfig"]["maxTokens"] == 64
        return
    assert body["model"] == case.request_model
    if case.provider in ("openai", "openai-compatible", "azure"):
        if case.provider == "azure":
            assert request.headers["api-key"] == API_KEY
        else:
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
    assert not any(API_KEY in t or AWS_SECRET in t for t in texts)

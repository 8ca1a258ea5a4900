"""Recorded provider tool-call answers (``../shared/conformance``) drive the worker's tool loop.

Each recorded answer that calls tools (OpenAI, Anthropic, Ollama; single and parallel calls;
streamed and whole) is served byte for byte as the model's first turn, then a recorded text answer
of the same provider as its second. The worker runs under the real Celery task with the real
providers and HTTP client: every recorded call must run exactly once with the recorded arguments,
and its result must be in the second request the provider receives, answering that call.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from celery.contrib.testing.worker import start_worker

from producers import Client
from tests.support.conformance_cases import (
    API_KEY,
    AWS_KEY_ID,
    AWS_SECRET,
    AZURE_API_VERSION,
    CONFORMANCE,
    Case,
    transcripts,
)
from tests.support.replay_server import ReplayServer, Reply
from workers.runtime.app import close_runner, create_app
from workers.settings import Settings
from workers.tools import REGISTRY, register_tool
from workers.tools.publish import RegistryPublisher

#: The recorded text answer used as the second turn, per (provider, streamed).
FINAL = {
    ("openai", True): "openai/oa_stream_text_usage_01",
    ("openai", False): "openai/oa_nonstream_text_01",
    ("anthropic", True): "anthropic/an_stream_text_ping_01",
    ("anthropic", False): "anthropic/an_nonstream_text_01",
    ("ollama", True): "ollama/ol_stream_text_01",
    ("ollama", False): "ollama/ol_nonstream_text_01",
    ("azure", True): "azure/az_stream_text_01",
    ("azure", False): "azure/az_nonstream_text_01",
    ("gemini", True): "gemini/gm_stream_text_01",
    ("gemini", False): "gemini/gm_nonstream_text_01",
    ("bedrock", True): "bedrock/br_stream_text_01",
    ("bedrock", False): "bedrock/br_nonstream_text_01",
    ("openai-compatible", True): "openai-compatible/openrouter_stream_reasoning_01",
    ("openai-compatible", False): "openai-compatible/together_nonstream_01",
}
KEY = "conformance-tools"
#: The providers beyond the built-ins, as a worker's config file names them (all served by the replay server).
PROVIDERS = """
[providers.azure]
type = "azure"
base_url = "{base}"
api_key_env = "AZURE_TEST_KEY"
api_version = "{azure_version}"

[providers.gemini]
type = "gemini"
base_url = "{base}/v1beta"
api_key_env = "GEMINI_TEST_KEY"

[providers.bedrock]
type = "bedrock"
base_url = "{base}"
region = "us-east-1"

[providers.openai-compatible]
type = "openai"
base_url = "{base}/v1"
api_key_env = "COMPAT_TEST_KEY"

[models."openai-compatible:*"]   # a server on 127.0.0.1: genai-prices cannot know it by its URL
input_per_mtok = 0.15
output_per_mtok = 0.6
"""
#: A priced model of the provider, for a sidecar that does not name the request's model.
PRICED = {"anthropic": "claude-sonnet-4-5", "azure": "gpt-4o"}


def _tool_cases() -> list[Any]:
    out = []
    for param in transcripts():
        case: Case = param.values[0]
        if case.status == 200 and case.expected.get("tool_calls") and case.expected.get("outcome") == "complete":
            out.append(param)
    return out


def _reply(name: str) -> Reply:
    meta = json.loads((CONFORMANCE / "transcripts" / f"{name}.expected.json").read_text(encoding="utf-8"))
    body = (CONFORMANCE / "transcripts" / name).parent.joinpath(meta["body_file"]).read_bytes()
    return Reply(meta["response"]["status"], [(k, v) for k, v in meta["response"]["headers"]], body)


def _arguments(call: dict[str, Any]) -> dict[str, Any]:
    value = call.get("arguments", call.get("input", call.get("args")))
    return value if isinstance(value, dict) else {}


def _key(item: tuple[str, dict[str, Any]]) -> str:
    return json.dumps(item, sort_keys=True)


@pytest.fixture(scope="module")
def stack(redis_server_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ReplayServer, Client]]:
    # a database and a queue of this module's own, emptied first: a job another module left queued
    # or held on the shared test Redis must not reach this worker and eat a scripted reply
    url = redis_server_url.rsplit("/", 1)[0] + "/9"
    queue = f"conformance-tools-{uuid.uuid4().hex[:8]}"
    redis.Redis.from_url(url).flushdb()
    with ReplayServer() as server:
        base = f"{server.origin}/{KEY}"
        env = {
            "OPENAI_BASE_URL": f"{base}/v1",
            "OPENAI_API_KEY": API_KEY,
            "ANTHROPIC_BASE_URL": base,
            "ANTHROPIC_API_KEY": API_KEY,
            "OLLAMA_HOST": base,
            "AZURE_TEST_KEY": API_KEY,
            "GEMINI_TEST_KEY": API_KEY,
            "COMPAT_TEST_KEY": API_KEY,
            "AWS_ACCESS_KEY_ID": AWS_KEY_ID,
            "AWS_SECRET_ACCESS_KEY": AWS_SECRET,
            "NO_PROXY": "127.0.0.1,localhost",
        }
        config = tmp_path_factory.mktemp("conformance-tools") / "llmq.toml"
        config.write_text(PROVIDERS.format(base=base, azure_version=AZURE_API_VERSION))
        settings = Settings(
            redis_url=url,
            queue=queue,
            pool="threads",
            concurrency=2,
            coalesce_ms=20.0,
            claim_lease_s=10,
            config=str(config),
        )
        app = create_app(settings, provider_env=env)
        with (
            start_worker(app, pool="threads", concurrency=2, perform_ping_check=False, shutdown_timeout=10),
            Client(url, queue=queue) as client,
        ):
            yield server, client
        close_runner(app)


@pytest.mark.parametrize("case", _tool_cases())
def test_recorded_tool_calls_run_once_and_their_results_reach_the_provider(
    stack: tuple[ReplayServer, Client], case: Case
) -> None:
    server, client = stack
    recorded = case.expected["tool_calls"]
    ran: list[tuple[str, dict[str, Any]]] = []
    lock = threading.Lock()

    def handler_for(name: str) -> Any:
        def handler(**kwargs: Any) -> str:
            with lock:
                ran.append((name, kwargs))
                return f"result {len(ran)} of {name}"

        return handler

    names = sorted({c["name"] for c in recorded})
    shadowed = [spec for n in names if (spec := REGISTRY.get(n)) is not None]  # e.g. tests.support.tools
    for name in names:
        REGISTRY.remove(name)
        register_tool(name, f"recorded tool {name}", {"type": "object"}, handler_for(name))
    # the in-process worker shares this registry; publish it as a worker does at start
    publisher = RegistryPublisher(
        client.redis, "conformance", [REGISTRY.get(n).info(timeout_s=30, max_invalid=2) for n in names]
    )  # type: ignore[union-attr]
    publisher.publish()
    try:
        server.add_sequence(
            KEY, [Reply(case.status, case.headers, case.body), _reply(FINAL[(case.provider, case.stream)])]
        )
        job_id = f"conf-{case.provider}-{case.name}"
        result = client.submit(
            {
                "id": job_id,
                # a sidecar without the request's model: a priced one of that provider
                "model": f"{case.provider}:{PRICED.get(case.provider, 'test-model') if case.request_model == 'test-model' else case.request_model}",
                "messages": [{"role": "user", "content": "use the tools"}],
                "tools": names,
                "stream": case.stream,
                "max_tokens": 64,
            }
        ).result(timeout=60)
    finally:
        publisher.stop()
        for name in names:
            REGISTRY.remove(name)
        for spec in shadowed:
            REGISTRY.add(spec)

    assert result.status == "succeeded", result.error
    assert result.turns == 2
    # every recorded call ran exactly once, with the recorded arguments
    expected = [(c["name"], _arguments(c)) for c in recorded]
    assert sorted(ran, key=_key) == sorted(expected, key=_key)
    requests = server.requests[KEY]
    assert len(requests) == 2  # one request per turn, no retries
    second = json.loads(requests[1].body)
    calls = result.messages[0].tool_calls or []
    assert [c.function.name for c in calls] == [c["name"] for c in recorded]
    results = {m.tool_call_id: m.content for m in result.messages if m.role == "tool"}
    assert sorted(results.values()) == sorted(f"result {i} of {name}" for i, (name, _) in enumerate(ran, 1))
    # ...and each result went back to the provider, answering its call
    if case.provider == "anthropic":
        blocks = second["messages"][-1]["content"]
        sent = {b["tool_use_id"]: b["content"] for b in blocks if b.get("type") == "tool_result"}
        assert sent == results
        assert [b["id"] for b in second["messages"][-2]["content"] if b["type"] == "tool_use"] == [c.id for c in calls]
    elif case.provider == "bedrock":
        blocks = second["messages"][-1]["content"]
        sent = {b["toolResult"]["toolUseId"]: b["toolResult"]["content"][0]["text"] for b in blocks}
        assert sent == results
        uses = [b["toolUse"] for b in second["messages"][-2]["content"] if "toolUse" in b]
        assert [u["toolUseId"] for u in uses] == [c["toolUseId"] for c in recorded] == [c.id for c in calls]
        assert [u["input"] for u in uses] == [_arguments(c) for c in recorded]
    elif case.provider == "gemini":  # no call ids: each response names its call's function, in order
        model_turn, answers = second["contents"][-2], second["contents"][-1]
        assert model_turn["role"] == "model" and answers["role"] == "user"
        fcalls = [p for p in model_turn["parts"] if "functionCall" in p]
        assert [p["functionCall"] for p in fcalls] == [{"name": c["name"], "args": c["args"]} for c in recorded]
        # the thought signatures go back on the parts that carried them
        assert ["thoughtSignature" in p for p in fcalls] == [c["has_thought_signature"] for c in recorded]
        sent = [p["functionResponse"] for p in answers["parts"]]
        assert sent == [{"name": c.function.name, "response": {"result": results[c.id]}} for c in calls]
    else:
        tool_messages = [m for m in second["messages"] if m["role"] == "tool"]
        assert sorted(m["content"] for m in tool_messages) == sorted(results.values())
        assistant = next(m for m in second["messages"] if m["role"] == "assistant")
        assert len(assistant["tool_calls"]) == len(recorded)
        if case.provider in ("openai", "azure", "openai-compatible"):
            assert {m["tool_call_id"]: m["content"] for m in tool_messages} == results
            assert [c["id"] for c in assistant["tool_calls"]] == [c["id"] for c in recorded]

"""The provider simulator over real HTTP: three wire formats, every fault, counters, the CLI."""

from __future__ import annotations

import functools
import json
import os
import random
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import httpx2
import pytest

from simulator.app import SimConfig, SimulatorThread
from simulator.script import words_for
from simulator.wire import Reply, parse_reply
from tests.support.waits import until

PROTOCOLS = ("openai", "anthropic", "ollama")
PROMPT = "What is the weather in Paris?"
SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}}}
PATHS = {"openai": "/v1/chat/completions", "anthropic": "/v1/messages", "ollama": "/api/chat"}


def build(protocol: str, *, stream: bool, model: str = "m", tools: bool = False, max_tokens: int | None = None):
    messages = [{"role": "user", "content": PROMPT}]
    body: dict = {"model": model, "messages": messages, "stream": stream}
    headers = {}
    function_tool = {"type": "function", "function": {"name": "get_weather", "parameters": SCHEMA}}
    if protocol == "openai":
        body |= {"stream_options": {"include_usage": True}} if stream else {}
        body |= {"max_tokens": max_tokens} if max_tokens else {}
        body |= {"tools": [function_tool]} if tools else {}
    elif protocol == "anthropic":
        headers["anthropic-version"] = "2023-06-01"
        body["max_tokens"] = max_tokens or 1024
        if tools:
            body["tools"] = [{"name": "get_weather", "input_schema": SCHEMA}, {"name": "no_args", "input_schema": {}}]
    else:
        body |= {"options": {"num_predict": max_tokens}} if max_tokens else {}
        body |= {"tools": [function_tool]} if tools else {}
    return PATHS[protocol], body, headers


@functools.cache
def http() -> httpx2.Client:
    """One client for the module: building an httpx2 client (its TLS context) takes ~0.2 s here."""
    return httpx2.Client(timeout=10)


@pytest.fixture(scope="module", autouse=True)
def _close_http() -> Iterator[None]:
    yield
    http().close()
    http.cache_clear()


def call(
    sim: SimulatorThread, protocol: str, *, stream=True, fault: str = "", job: str = "", extra=None, **kw
) -> Reply:
    path, body, headers = build(protocol, stream=stream, **kw)
    headers |= {k: v for k, v in (("x-llmq-sim-fault", fault), ("x-llmq-job-id", job)) if v} | (extra or {})
    chunks: list[bytes] = []
    with http().stream("POST", sim.url + path, json=body, headers=headers) as r:
        try:
            for chunk in r.iter_bytes():
                chunks.append(chunk)
            complete = True
        except httpx2.RemoteProtocolError:
            complete = False
        return parse_reply(
            protocol, stream and r.status_code == 200, r.status_code, dict(r.headers), b"".join(chunks), complete
        )


def stats(sim: SimulatorThread, what: str = "stats", **params) -> dict | list:
    return http().get(f"{sim.url}/_sim/{what}", params=params).json()


@pytest.mark.parametrize("stream", [False, True], ids=["once", "stream"])
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_text_answer(simulator: SimulatorThread, protocol: str, stream: bool) -> None:
    reply = call(simulator, protocol, stream=stream)
    assert reply.status == 200 and reply.complete and reply.terminated and not reply.errors and not reply.malformed
    assert reply.text == "".join(words_for(PROMPT, 20))
    assert reply.finish == {"openai": "stop", "anthropic": "end_turn", "ollama": "stop"}[protocol]
    assert reply.completion_tokens == 20 and reply.prompt_tokens and reply.prompt_tokens > 0
    stream_type = "application/x-ndjson" if protocol == "ollama" else "text/event-stream"
    assert reply.content_type.startswith(stream_type if stream else "application/json")
    if protocol != "ollama":
        assert reply.headers.get("x-request-id" if protocol == "openai" else "request-id", "").startswith("req_")


@pytest.mark.parametrize("stream", [False, True], ids=["once", "stream"])
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_tool_calls(simulator: SimulatorThread, protocol: str, stream: bool) -> None:
    one = call(simulator, protocol, stream=stream, fault="tools", tools=True, job="a")
    assert one.text == "" and one.tool_calls == [("get_weather", {"city": PROMPT[-40:].strip(), "days": 42})]
    assert one.finish == {"openai": "tool_calls", "anthropic": "tool_use", "ollama": "stop"}[protocol]
    two = call(simulator, protocol, stream=stream, fault="tools@2", tools=True, job="b")
    names = [name for name, _ in two.tool_calls]
    assert names == (["get_weather", "no_args"] if protocol == "anthropic" else ["get_weather", "get_weather"])
    if protocol == "anthropic":
        assert two.tool_calls[1][1] == {}  # an empty input streams as a single partial_json ""
    assert call(simulator, protocol, stream=stream, fault="tools", job="c").text  # no tools declared: text


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_max_tokens_and_length_overrides(simulator: SimulatorThread, protocol: str) -> None:
    capped = call(simulator, protocol, max_tokens=5)
    assert capped.completion_tokens == 5 and capped.text == "".join(words_for(PROMPT, 5))
    assert capped.finish == {"openai": "length", "anthropic": "max_tokens", "ollama": "length"}[protocol]
    assert call(simulator, protocol, extra={"x-llmq-sim-tokens": "3"}).completion_tokens == 3
    assert call(simulator, protocol, stream=False, extra={"x-llmq-sim-tokens": "0"}).text == ""


HTTP_FAULTS = {  # fault: (status, a fragment of the body) for openai, anthropic, ollama
    "429@7": ((429, "rate_limit_exceeded"), (429, "rate_limit_error"), (429, "too many")),
    "quota": ((429, "insufficient_quota"), (400, "credit balance"), (429, "billing")),
    "context": ((400, "context_length_exceeded"), (400, "prompt is too long"), (400, "context length")),
    "401": ((401, "invalid_api_key"), (401, "authentication_error"), (401, "unauthorized")),
    "403": ((403, "unsupported_country"), (403, "permission_error"), (403, "forbidden")),
    "404": ((404, "model_not_found"), (404, "not_found_error"), (404, 'model "m" not found, try pulling it first')),
    "400": ((400, "invalid_request_error"), (400, "invalid_request_error"), (400, "invalid")),
    "500": ((500, "server_error"), (500, "api_error"), (500, "llama runner")),
    "502": ((502, "server_error"), (502, "api_error"), (502, "bad gateway")),
    "503": ((503, "server_error"), (503, "api_error"), (503, "server busy")),
    "529": ((529, "server_error"), (529, "overloaded_error"), (529, "overloaded")),
    "418": ((418, "invalid_request_error"), (418, "invalid_request_error"), (418, "418")),
}


@pytest.mark.parametrize("stream", [False, True], ids=["once", "stream"])
@pytest.mark.parametrize("fault", list(HTTP_FAULTS))
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_http_error_faults(simulator: SimulatorThread, protocol: str, fault: str, stream: bool) -> None:
    reply = call(simulator, protocol, stream=stream, fault=fault)
    status, fragment = HTTP_FAULTS[fault][PROTOCOLS.index(protocol)]
    message = json.loads(reply.raw)["error"] if protocol == "ollama" else reply.raw.decode()
    assert reply.status == status and fragment in message
    assert reply.content_type.startswith("application/json")  # errors are JSON even for stream requests
    body = json.loads(reply.raw)
    if protocol == "openai":
        assert set(body["error"]) == {"message", "type", "param", "code"}
    elif protocol == "anthropic":
        assert body["type"] == "error" and body["request_id"] == reply.headers["request-id"]
        should_retry = status in (429, 529) or status >= 500
        assert reply.headers["x-should-retry"] == ("true" if should_retry else "false")
    else:
        assert list(body) == ["error"] and isinstance(body["error"], str)
    if fault == "429@7":
        assert reply.headers["retry-after"] == "7"
    if fault == "529" and protocol == "anthropic":
        assert "retry-after" not in reply.headers


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_retry_after_ms(simulator: SimulatorThread, protocol: str) -> None:
    reply = call(simulator, protocol, fault="429ms@250")
    assert reply.status == 429 and reply.headers["retry-after-ms"] == "250" and reply.headers["retry-after"] == "1"
    assert call(simulator, protocol, fault="429", job="x").headers["retry-after"] == "1"


PACING = {"unpaced": {}, "paced": {"x-llmq-sim-tokens-per-s": "400"}}


@pytest.mark.parametrize("pacing", list(PACING))
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_midstream_error(simulator: SimulatorThread, protocol: str, pacing: str) -> None:
    reply = call(simulator, protocol, fault="midstream", extra=PACING[pacing])
    assert reply.status == 200 and reply.complete and not reply.terminated
    assert reply.text == "".join(words_for(PROMPT, 20)[:10])
    assert reply.errors == [
        {
            "openai": "server_error",
            "anthropic": "overloaded_error",
            "ollama": "an error was encountered while running the model",
        }[protocol]
    ]
    once = call(simulator, protocol, stream=False, fault="midstream", job="once")
    assert once.status == (529 if protocol == "anthropic" else 500)


@pytest.mark.parametrize("pacing", list(PACING))
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_cut_stream_has_no_terminator(simulator: SimulatorThread, protocol: str, pacing: str) -> None:
    reply = call(simulator, protocol, fault="cut", extra=PACING[pacing])
    assert reply.status == 200 and not reply.complete and not reply.terminated
    assert reply.text == "".join(words_for(PROMPT, 20)[:10])
    once = call(simulator, protocol, stream=False, fault="cut", job="once")
    assert once.status == 200 and not once.complete  # a body shorter than announced
    assert stats(simulator)["by_outcome"]["cut"] == 2


@pytest.mark.parametrize("pacing", list(PACING))
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_malformed_line_then_the_stream_goes_on(simulator: SimulatorThread, protocol: str, pacing: str) -> None:
    reply = call(simulator, protocol, fault="malformed", extra=PACING[pacing])
    assert reply.status == 200 and reply.malformed == 1 and reply.terminated
    assert reply.text == "".join(words_for(PROMPT, 20))
    once = call(simulator, protocol, stream=False, fault="malformed", job="once")
    assert once.status == 200 and once.malformed == 1


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_nousage(simulator: SimulatorThread, protocol: str) -> None:
    reply = call(simulator, protocol, fault="nousage")
    assert reply.terminated and reply.text
    if protocol == "anthropic":  # the format requires output_tokens; the optional counts go
        assert reply.completion_tokens == 20 and reply.delta_usage_keys == ["output_tokens"]
    else:
        assert reply.completion_tokens is None and reply.prompt_tokens is None


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_stall_slow_and_latency_delay_but_complete(simulator: SimulatorThread, protocol: str) -> None:
    for i, (fault, extra) in enumerate([("stall@0.3", {}), ("slow@0.3", {}), (None, {"x-llmq-sim-latency": "0.3"})]):
        started = time.monotonic()
        reply = call(simulator, protocol, fault=fault, extra=extra, job=str(i))
        # a lower bound only (load makes it longer), less the event loop's timer granularity
        assert time.monotonic() - started >= 0.25 and reply.terminated and reply.completion_tokens == 20


def _closed_early_record(sim: SimulatorThread, job: str) -> dict:
    def ended() -> dict | None:
        records = stats(sim, "streams", job=job)
        return records[0] if records and records[0]["ended"] is not None else None

    return until(ended, "the simulator to see the stream end", 30, 0.02)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_client_closing_a_paced_stream_is_seen_promptly(simulator: SimulatorThread, protocol: str) -> None:
    path, body, headers = build(protocol, stream=True)
    headers |= {"x-llmq-job-id": "gone", "x-llmq-sim-tokens-per-s": "5", "x-llmq-sim-tokens": "100"}
    with http().stream("POST", simulator.url + path, json=body, headers=headers) as r:
        next(r.iter_bytes())
    closed_at = time.time()
    record = _closed_early_record(simulator, "gone")
    assert record["outcome"] == "closed_early" and record["path"] == path and record["model"] == "m"
    assert record["started"] <= closed_at and record["ended"] - closed_at < 2.0
    counters = stats(simulator)
    assert counters["closed_early"] == 1 and counters["open_streams"] == 0


def test_client_timing_out_on_a_stall_is_seen_without_any_write(simulator: SimulatorThread) -> None:
    path, body, headers = build("openai", stream=True)
    headers |= {"x-llmq-job-id": "stalled", "x-llmq-sim-fault": "stall"}
    with (
        pytest.raises(httpx2.ReadTimeout),
        http().stream("POST", simulator.url + path, json=body, headers=headers, timeout=0.3) as r,
    ):
        list(r.iter_bytes())
    closed_at = time.time()
    record = _closed_early_record(simulator, "stalled")
    assert record["outcome"] == "closed_early" and record["ended"] - closed_at < 2.0


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_sequences_are_per_job(simulator: SimulatorThread, protocol: str) -> None:
    statuses = [call(simulator, protocol, model="m~503,529", job="j1").status for _ in range(4)]
    assert statuses == [503, 529, 200, 200]
    assert call(simulator, protocol, model="m~503,529", job="j2").status == 503  # a new job starts over
    assert [call(simulator, protocol, model="m~503*", job="j3").status for _ in range(3)] == [503] * 3
    plan = [call(simulator, protocol, fault="429,ok,500", job="j4").status for _ in range(4)]
    assert plan == [429, 200, 500, 200]
    counters = stats(simulator)
    assert counters["by_job"] == {"j1": 4, "j2": 1, "j3": 3, "j4": 4}
    assert counters["by_model"] == {"m~503,529": 5, "m~503*": 3, "m": 4}
    assert counters["by_outcome"] == {"error_503": 5, "error_529": 1, "error_429": 1, "error_500": 1, "ok": 4}


def test_seeded_rates_are_deterministic() -> None:
    rates = {"503": 0.3, "429": 0.2}
    rng = random.Random(11)
    expected = [503 if x < 0.3 else 429 if x < 0.5 else 200 for x in (rng.random() for _ in range(60))]
    with SimulatorThread(SimConfig(fault_rates=rates, seed=11)) as sim:
        first = [call(sim, "openai", stream=False).status for _ in range(60)]
        http().post(f"{sim.url}/_sim/reset")
        again = [call(sim, "openai", stream=False).status for _ in range(60)]
        assert first == again == expected
        counts = {"error_503": expected.count(503), "error_429": expected.count(429), "ok": expected.count(200)}
        assert stats(sim)["by_outcome"] == counts


def test_stats_history_reset_and_config(simulator: SimulatorThread) -> None:
    for protocol in PROTOCOLS:
        call(simulator, protocol, job="s1")
        call(simulator, protocol, stream=False, job="s1")
    counters = stats(simulator)
    assert counters["requests"] == 6 and counters["by_path"] == {p: 2 for p in PATHS.values()}
    assert counters["by_job"] == {"s1": 6} and counters["by_outcome"] == {"ok": 6} and counters["open_streams"] == 0
    streams = stats(simulator, "streams", job="s1")
    assert [r["path"] for r in streams] == list(PATHS.values())
    assert all(r["outcome"] == "ok" and r["started"] <= r["ended"] and r["stream"] for r in streams)
    assert len(stats(simulator, "requests", job="s1")) == 6 and stats(simulator, "streams", job="nope") == []
    config = http().post(f"{simulator.url}/_sim/config", json={"completion_tokens": 4}).json()
    assert config["completion_tokens"] == 4 and call(simulator, "ollama").completion_tokens == 4
    assert http().post(f"{simulator.url}/_sim/config", json={"fault_rates": {"bogus": 1}}).status_code == 400
    assert http().post(f"{simulator.url}/_sim/reset").json() == {"ok": True}
    assert stats(simulator)["requests"] == 0 and stats(simulator, "streams") == []


@pytest.mark.parametrize(
    ("protocol", "change", "status", "fragment"),
    [
        ("anthropic", {"headers": {"anthropic-version": ""}}, 400, "anthropic-version: header is required"),
        ("anthropic", {"drop": "max_tokens"}, 400, "max_tokens: Field required"),
        ("openai", {"body": {"messages": []}}, 400, "messages"),
        ("ollama", {"drop": "model"}, 400, '{"error":"model is required"}'),
        ("openai", {"headers": {"x-llmq-sim-fault": "bogus"}}, 400, "unknown fault item"),
        ("ollama", {"headers": {"x-llmq-sim-tokens": "many"}}, 400, "x-llmq-sim-tokens"),
    ],
)
def test_invalid_requests_are_rejected_like_the_real_api(
    simulator: SimulatorThread, protocol, change, status, fragment
) -> None:
    path, body, headers = build(protocol, stream=True)
    body = {k: v for k, v in {**body, **change.get("body", {})}.items() if k != change.get("drop")}
    response = http().post(f"{simulator.url}{path}", json=body, headers={**headers, **change.get("headers", {})})
    assert response.status_code == status and fragment in response.text
    assert stats(simulator)["by_outcome"] == {"invalid": 1} and stats(simulator)["requests"] == 1


def test_ollama_streams_unless_told_not_to(simulator: SimulatorThread) -> None:
    _, body, _ = build("ollama", stream=True)
    del body["stream"]
    response = http().post(f"{simulator.url}/api/chat", json=body)
    lines = [json.loads(line) for line in response.text.splitlines()]
    assert response.headers["content-type"] == "application/x-ndjson" and len(lines) == 21
    assert lines[-1]["done"] is True and lines[-1]["eval_count"] == 20 and "created_at" in lines[0]


def test_llmq_simulate_cli_subprocess(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    llmq = Path(sys.executable).parent / "llmq"
    out = (tmp_path / "out.txt").open("w+")
    cmd = [str(llmq), "simulate", "--port", str(port), "--completion-tokens", "3", "--fault-rate", "cut=0"]
    proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:

        def listening() -> bool:
            assert proc.poll() is None, (tmp_path / "out.txt").read_text()
            return "listening" in (tmp_path / "out.txt").read_text()

        until(listening, lambda: "the simulator to listen: " + (tmp_path / "out.txt").read_text(), 60)
        reply = call(SimpleNamespace(url=f"http://127.0.0.1:{port}"), "anthropic")  # type: ignore[arg-type]
        assert reply.terminated and reply.completion_tokens == 3
        assert http().get(f"http://127.0.0.1:{port}/_sim/stats").json()["requests"] == 1
    finally:
        proc.terminate()
        assert proc.wait(10) == 0
        out.close()
    bad = subprocess.run([str(llmq), "simulate", "--fault-rate", "nope=0.1"], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown fault item" in bad.stderr


def test_the_official_sdks_read_the_simulator(simulator: SimulatorThread) -> None:
    openai, anthropic, ollama = (pytest.importorskip(name) for name in ("openai", "anthropic", "ollama"))
    messages, expected = [{"role": "user", "content": PROMPT}], "".join(words_for(PROMPT, 20))
    weather = {"type": "function", "function": {"name": "get_weather", "parameters": SCHEMA}}
    with openai.OpenAI(base_url=f"{simulator.url}/v1", api_key="sk-sim", max_retries=0) as oa:
        options = {"messages": messages, "tools": [weather], "stream_options": {"include_usage": True}}
        with oa.chat.completions.stream(model="m~tools@2", **options) as stream:
            final = stream.get_final_completion()
        assert [c.function.name for c in final.choices[0].message.tool_calls] == ["get_weather"] * 2
        assert final.usage.prompt_tokens > 0 and final.choices[0].finish_reason == "tool_calls"
        with pytest.raises(openai.RateLimitError) as quota:
            oa.chat.completions.create(model="m~quota", messages=messages)
        assert quota.value.code == "insufficient_quota"
    with anthropic.Anthropic(base_url=simulator.url, api_key="sk-sim", max_retries=0) as an:
        with an.messages.stream(model="m", max_tokens=100, messages=messages) as stream:
            assert "".join(stream.text_stream) == expected
            message = stream.get_final_message()
        assert message.usage.output_tokens == 20 and message.stop_reason == "end_turn"
        tools = [
            {"name": "get_weather", "input_schema": SCHEMA},
            {"name": "no_args", "input_schema": {"type": "object"}},
        ]
        with an.messages.stream(model="m~tools@2", max_tokens=100, messages=messages, tools=tools) as stream:
            blocks = stream.get_final_message().content
        assert [(b.name, b.input) for b in blocks] == [("get_weather", {"city": PROMPT, "days": 42}), ("no_args", {})]
        with pytest.raises(anthropic.RateLimitError) as info:
            an.messages.create(model="m~429@3", max_tokens=100, messages=messages)
        assert info.value.response.headers["retry-after"] == "3"
        with pytest.raises(anthropic.APIStatusError, match="overloaded_error"):
            list(an.messages.create(model="m~midstream", max_tokens=100, messages=messages, stream=True))
    client = ollama.Client(host=simulator.url)
    assert "".join(part.message.content for part in client.chat(model="m", messages=messages, stream=True)) == expected
    assert client.chat(model="m", messages=messages, tools=[weather], stream=False).eval_count == 20
    with pytest.raises(ollama.ResponseError) as err:
        client.chat(model="m~404", messages=messages)
    assert err.value.status_code == 404 and 'model "m" not found' in str(err.value)


@pytest.mark.parametrize(("version", "status"), [("2024-10-21", 200), ("2025-04-01-preview", 200), ("preview", 404)])
def test_azure_deployment_urls_take_dated_api_versions_only(
    simulator: SimulatorThread, version: str, status: int
) -> None:
    """``preview``/``latest`` belong to the v1 path (``/openai/v1/...?api-version=preview``)."""
    _, body, _ = build("openai", stream=False)
    url = f"{simulator.url}/openai/deployments/gpt-4o/chat/completions?api-version={version}"
    response = http().post(url, json=body, headers={"api-key": "k"})
    assert response.status_code == status, response.text

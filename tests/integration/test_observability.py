"""One trace per job across processes, JSON logs sampled per trace, every decision counted.

Real parts only: the OTLP/HTTP exporter posts protobuf to a receiver this test runs
(tests/support/otlp_receiver.py), an in-process Celery worker runs jobs against the simulator,
and the worker's ``/metrics`` is read over HTTP.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from celery.contrib.testing.worker import start_worker
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from prometheus_client import start_http_server
from prometheus_client.parser import text_string_to_metric_families

from producers import Client
from simulator.app import SimulatorThread
from simulator.env import provider_env
from tests.support import tools as T
from tests.support.otlp_receiver import OTLPReceiver, ReceivedSpan
from tests.support.waits import until
from workers.runtime.app import close_runner, create_app, runner_for
from workers.runtime.logs import JsonFormatter
from workers.settings import Settings

SECRET = "sk-proj-OBSERVABILITYsecret0123456789abcdef"


@pytest.fixture
def receiver() -> Iterator[OTLPReceiver]:
    with OTLPReceiver() as r:
        yield r


TracedWorker = Callable[..., Any]


@pytest.fixture
def start_traced_worker(
    redis_url: str, simulator: SimulatorThread, receiver: OTLPReceiver, monkeypatch: pytest.MonkeyPatch
) -> Iterator[TracedWorker]:
    """Starts an in-process worker exporting to ``receiver`` (``config``: an optional routes file)."""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.url)
    monkeypatch.setenv("OTEL_SERVICE_NAME", "llmq-worker-test")
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")
    monkeypatch.delenv("OTEL_SDK_DISABLED", raising=False)
    with contextlib.ExitStack() as stack:

        def start(config: Path | None = None) -> Any:
            settings = Settings(
                redis_url=redis_url,
                pool="threads",
                concurrency=4,
                coalesce_ms=5.0,
                claim_lease_s=10,
                tools="tests.support.tools",
                config=str(config) if config else None,
            )
            env = {**provider_env(simulator.url), "OPENAI_API_KEY": SECRET}
            app = create_app(settings, provider_env=env)
            stack.callback(close_runner, app)
            stack.enter_context(
                start_worker(app, pool="threads", concurrency=4, perform_ping_check=False, shutdown_timeout=10)
            )
            return app

        yield start


@pytest.fixture
def traced_worker(start_traced_worker: TracedWorker) -> Any:
    return start_traced_worker()


def _otlp_provider(receiver: OTLPReceiver, service: str) -> TracerProvider:
    """A producer-side provider exporting OTLP/HTTP to ``receiver`` through a batch processor."""
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=f"{receiver.url}/v1/traces")))
    return provider


@pytest.fixture
def producer_provider(receiver: OTLPReceiver) -> Iterator[TracerProvider]:
    provider = _otlp_provider(receiver, "llmq-producer-test")
    yield provider
    provider.shutdown()


@pytest.fixture
def producer(redis_url: str, producer_provider: TracerProvider) -> Iterator[Client]:
    with Client(redis_url, tracer=producer_provider.get_tracer("test")) as c:
        yield c


@pytest.fixture
def json_lines() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("llmq")
    old = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield stream
    logger.removeHandler(handler)
    logger.setLevel(old)


def _job(model: str, fallbacks: list[str] | None = None, **extra: Any) -> dict[str, Any]:
    return {
        "model": model,
        "fallbacks": fallbacks or [],
        "messages": [{"role": "user", "content": "observe me"}],
        "max_tokens": 64,
        "temperature": 0.5,
        **extra,
    }


def _trace(spans: list[ReceivedSpan], trace_id: str) -> list[ReceivedSpan]:
    return sorted((s for s in spans if s.trace_id == trace_id), key=lambda s: s.start_ns)


def _metrics_text(app: Any) -> str:
    """The worker's registry served over HTTP by prometheus_client."""
    registry = runner_for(app).res.metrics.registry
    server, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.server_address[1]}/metrics", timeout=10) as r:
            return r.read().decode()
    finally:
        server.shutdown()
        thread.join(5)


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _scrape(app: Any) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The worker's ``/metrics``, parsed back."""
    return _samples(_metrics_text(app))


def test_one_trace_from_producer_through_retry_and_fallback(
    traced_worker: Any,
    producer: Client,
    producer_provider: TracerProvider,
    receiver: OTLPReceiver,
    json_lines: io.StringIO,
) -> None:
    # Given a primary that answers 429 (retry-after 10 ms), then insufficient_quota on the retry
    handle = producer.submit(_job("openai:gpt-4o~429ms@10,quota", ["openai:gpt-4o-mini"]))
    result = handle.result(timeout=60)
    assert result.status == "succeeded" and result.model_used == "openai:gpt-4o-mini"
    # When the worker and the producer flush their spans
    producer_provider.force_flush()
    spans = receiver.wait_for(lambda s: any(x.attributes.get("llmq.job_id") == handle.id for x in s))
    trace_id = next(x.trace_id for x in spans if x.name == "send llmq" and x.attributes["llmq.job_id"] == handle.id)
    spans = receiver.wait_for(lambda s: sum(1 for x in s if x.trace_id == trace_id) >= 5)
    mine = _trace(spans, trace_id)
    # Then: producer span -> job span -> three sibling chat spans
    by_name: dict[str, list[ReceivedSpan]] = {}
    for s in mine:
        by_name.setdefault(s.name, []).append(s)
    (send,) = by_name["send llmq"]
    (job,) = by_name["process llmq"]
    assert send.kind == "PRODUCER" and send.service == "llmq-producer-test" and send.parent_span_id == ""
    assert job.kind == "CONSUMER" and job.parent_span_id == send.span_id and job.service == "llmq-worker-test"
    chats = [s for s in mine if s.name.startswith("chat ")]
    assert [s.name for s in chats] == ["chat gpt-4o~429ms@10,quota", "chat gpt-4o~429ms@10,quota", "chat gpt-4o-mini"]
    assert all(s.parent_span_id == job.span_id and s.kind == "CLIENT" for s in chats)
    first, second, third = (s.attributes for s in chats)
    assert first["error.type"] == "rate_limited" and second["error.type"] == "insufficient_quota"
    assert "error.type" not in third
    assert [a["llmq.attempt"] for a in (first, second, third)] == [1, 2, 3]
    assert [a["llmq.fallback_index"] for a in (first, second, third)] == [0, 0, 1]
    assert third["gen_ai.operation.name"] == "chat" and third["gen_ai.provider.name"] == "openai"
    assert third["gen_ai.request.model"] == "gpt-4o-mini" and third["gen_ai.response.model"]
    assert third["gen_ai.response.id"] and third["gen_ai.response.finish_reasons"] == ["stop"]
    assert third["gen_ai.usage.input_tokens"] == result.usage.prompt_tokens
    assert third["gen_ai.usage.output_tokens"] == result.usage.completion_tokens
    assert third["gen_ai.request.max_tokens"] == 64 and third["gen_ai.request.temperature"] == 0.5
    assert third["gen_ai.request.stream"] is True and third["gen_ai.response.time_to_first_chunk"] >= 0
    assert third["server.address"] == "127.0.0.1" and isinstance(third["server.port"], int)
    assert third["llmq.job_id"] == handle.id and third["llmq.tenant"] == "default"
    assert third["llmq.cost_usd"] == pytest.approx(result.cost_usd)
    # decisions are events on the job span: the retry, then the fallback
    names = [name for name, _ in job.events]
    assert names.index("llmq.retry") < names.index("llmq.fallback")
    assert job.attributes["llmq.status"] == "succeeded"
    # and the job's log lines carry the same trace id, in order: retry, fallback, job
    lines = [json.loads(line) for line in json_lines.getvalue().splitlines()]
    mine_lines = [line for line in lines if line.get("job_id") == handle.id]
    assert [line["event"] for line in mine_lines if line["event"] in {"retry", "fallback", "job"}] == [
        "retry",
        "fallback",
        "job",
    ]
    assert all(line["trace_id"] == trace_id for line in mine_lines)
    retry = next(line for line in mine_lines if line["event"] == "retry")
    assert retry["attempt"] == 1 and retry["error_type"] == "rate_limited" and retry["backoff_s"] >= 0
    finished = mine_lines[-1]
    assert finished["status"] == "succeeded" and finished["model_used"] == "openai:gpt-4o-mini"
    assert finished["attempts"] == 3 and finished["completion_tokens"] == result.usage.completion_tokens
    # the provider key is in no span and no log line
    assert SECRET not in json_lines.getvalue()
    assert SECRET not in repr([(s.attributes, s.events) for s in receiver.spans])


def test_metrics_count_every_decision_after_real_jobs(traced_worker: Any, producer: Client) -> None:
    # Given: a retry then success, a 429-retry then quota fallback, and a job that fails outright
    jobs = [
        _job("openai:gpt-4o~503"),
        _job("openai:gpt-4o~429ms@10,quota", ["openai:gpt-4o-mini"]),
        _job("openai:gpt-4o~400"),
    ]
    results = [producer.submit(j).result(timeout=60) for j in jobs]
    assert [r.status for r in results] == ["succeeded", "succeeded", "failed"]
    # a result is visible from its terminal write; its run counts it in the metrics just after
    until(lambda: runner_for(traced_worker).runs_in_flight() == 0, "the runs' bookkeeping to end", 60)
    text = _metrics_text(traced_worker)
    samples = _samples(text)

    def value(name: str, **labels: str) -> float:
        return samples.get((name, tuple(sorted(labels.items()))), 0.0)

    a, b, bad, mini = "openai:gpt-4o~503", "openai:gpt-4o~429ms@10,quota", "openai:gpt-4o~400", "openai:gpt-4o-mini"
    assert value("llm_requests_total", model=a, status="error") == 1
    assert value("llm_requests_total", model=a, status="ok") == 1
    assert value("llm_requests_total", model=b, status="error") == 2
    assert value("llm_requests_total", model=mini, status="ok") == 1
    assert value("llm_requests_total", model=bad, status="error") == 1
    assert value("llm_retries_total", model=a, error_type="server_error") == 1
    assert value("llm_retries_total", model=b, error_type="rate_limited") == 1
    assert value("llm_fallbacks_total", from_model=b, to_model=mini) == 1
    assert value("llmq_jobs_total", status="succeeded", prompt="") == 2
    assert value("llmq_jobs_total", status="failed", prompt="") == 1
    genai = {"gen_ai_operation_name": "chat", "gen_ai_provider_name": "openai"}
    assert (
        value(
            "gen_ai_client_operation_duration_seconds_count", **genai, gen_ai_request_model="gpt-4o-mini", error_type=""
        )
        == 1
    )
    assert (
        value(
            "gen_ai_client_operation_duration_seconds_count",
            **genai,
            gen_ai_request_model="gpt-4o~429ms@10,quota",
            error_type="rate_limited",
        )
        == 1
    )
    assert (
        value(
            "gen_ai_client_token_usage_count", **genai, gen_ai_request_model="gpt-4o-mini", gen_ai_token_type="output"
        )
        == 1
    )
    assert "llm_breaker_open" in text
    assert not any("job" in label for (_, labels) in samples for label, _ in labels)  # bounded labels


def test_the_gateway_continues_the_callers_traceparent(
    traced_worker: Any, receiver: OTLPReceiver, redis_url: str
) -> None:
    from starlette.testclient import TestClient

    from producers.aclient import AsyncClient
    from producers.gateway.app import create_gateway
    from producers.gateway.settings import GatewaySettings

    provider = _otlp_provider(receiver, "llmq-gateway-test")
    caller_trace, caller_span = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    settings = GatewaySettings(redis_url=redis_url, tokens={"tok-test": "default"})
    client = AsyncClient(redis_url, tracer=provider.get_tracer("gateway"))
    with TestClient(create_gateway(settings, client)) as http:
        reply = http.post(
            "/v1/jobs",
            json=_job("openai:gpt-4o-mini"),
            headers={"authorization": "Bearer tok-test", "traceparent": f"00-{caller_trace}-{caller_span}-01"},
        )
        assert reply.status_code == 202, reply.text
    provider.shutdown()
    spans = receiver.wait_for(
        lambda s: {"send llmq", "process llmq"} <= {x.name for x in s if x.trace_id == caller_trace}
    )
    mine = _trace(spans, caller_trace)
    send = next(s for s in mine if s.name == "send llmq")
    job = next(s for s in mine if s.name == "process llmq")
    assert send.parent_span_id == caller_span and job.parent_span_id == send.span_id


def test_tool_calls_are_spans_under_the_job_span_metrics_and_log_lines(
    traced_worker: Any, producer: Client, receiver: OTLPReceiver, json_lines: io.StringIO
) -> None:
    # Given: a model whose first call has schema-violating arguments, then a valid call (then text),
    # and a model that calls a tool whose handler raises with a credential in its message
    T.reset()
    fixed = producer.submit(_job("openai:gpt-4o-mini~badargs,tools", tools=["get_capital"])).result(timeout=60)
    failing = producer.submit(_job("openai:gpt-4o-mini~tools", tools=["boom"])).result(timeout=60)
    assert fixed.status == "succeeded" and failing.status == "succeeded", (fixed.error, failing.error)
    assert fixed.turns == 3 and failing.turns == 2

    def job_and_tools(job_id: str, count: int) -> tuple[ReceivedSpan, list[ReceivedSpan]]:
        def ready(spans: list[ReceivedSpan]) -> bool:
            job = next((x for x in spans if x.name == "process llmq" and x.attributes["llmq.job_id"] == job_id), None)
            return job is not None and sum(1 for x in spans if x.parent_span_id == job.span_id) >= count

        spans = receiver.wait_for(ready)
        job = next(x for x in spans if x.name == "process llmq" and x.attributes["llmq.job_id"] == job_id)
        return job, [x for x in _trace(spans, job.trace_id) if x.name.startswith("execute_tool ")]

    # Then: one execute_tool span per call, a child of the job span, with the call's id and outcome
    job, tools = job_and_tools(fixed.id, 2 + 3)  # 2 tool spans + 3 chat spans
    call_ids = [m.tool_calls[0].id for m in fixed.messages if m.tool_calls]
    assert [s.name for s in tools] == ["execute_tool get_capital", "execute_tool get_capital"]
    assert all(s.parent_span_id == job.span_id and s.kind == "INTERNAL" for s in tools)
    assert [s.attributes["gen_ai.tool.call.id"] for s in tools] == call_ids
    assert all(s.attributes["gen_ai.operation.name"] == "execute_tool" for s in tools)
    assert all(s.attributes["gen_ai.tool.name"] == "get_capital" for s in tools)
    invalid, ok = tools
    assert invalid.attributes["llmq.tool.outcome"] == "invalid"
    assert invalid.attributes["error.type"] == "invalid_arguments" and invalid.status_code == 2  # ERROR
    assert ok.attributes["llmq.tool.outcome"] == "ok" and "error.type" not in ok.attributes
    # no arguments or results in spans without LLMQ_TRACE_CONTENT
    assert not any(k.startswith("gen_ai.tool.call.a") or k == "gen_ai.tool.call.result" for k in ok.attributes)
    boom_job, (boom,) = job_and_tools(failing.id, 1 + 2)
    assert boom.parent_span_id == boom_job.span_id
    assert boom.attributes["gen_ai.tool.call.id"] == failing.messages[0].tool_calls[0].id
    assert boom.attributes["llmq.tool.outcome"] == "error" and boom.attributes["error.type"] == "RuntimeError"
    assert T.LEAKED_KEY not in repr([(s.attributes, s.events) for s in receiver.spans])
    # and /metrics counts each call once by tool and outcome
    samples = _scrape(traced_worker)

    def calls(tool: str, outcome: str) -> float:
        return samples.get(("llm_tool_calls_total", (("outcome", outcome), ("tool", tool))), 0.0)

    assert calls("get_capital", "ok") == 1
    assert calls("get_capital", "invalid") == 1
    assert calls("boom", "error") == 1
    assert sum(v for (name, _), v in samples.items() if name == "llm_tool_calls_total") == 3
    # and each call is a `tool` decision line of its job, with the job's trace id, in call order
    lines = [json.loads(line) for line in json_lines.getvalue().splitlines()]
    tool_lines = [line for line in lines if line.get("job_id") == fixed.id and line["event"] == "tool"]
    assert [(line["tool"], line["outcome"]) for line in tool_lines] == [
        ("get_capital", "invalid"),
        ("get_capital", "ok"),
    ]
    assert all(line["trace_id"] == job.trace_id for line in tool_lines)
    assert T.LEAKED_KEY not in json_lines.getvalue()


def test_a_timed_out_and_a_cancelled_tool_call_end_their_spans_with_bounded_outcomes(
    traced_worker: Any, producer: Client, receiver: OTLPReceiver
) -> None:
    # Given: a tool that outlives its 1 s timeout, and a job cancelled while its tool waits
    T.reset()
    slow = producer.submit(_job("openai:gpt-4o-mini~tools", tools=["sleepy"])).result(timeout=60)
    assert slow.status == "succeeded", slow.error
    handle = producer.submit(_job("openai:gpt-4o-mini~tools", tools=["patient"]))
    for event in handle.stream(timeout=30):
        if event.type == "tool_call":
            break
    handle.cancel()
    assert handle.result(timeout=30).status == "cancelled"
    # Then: each call's span ended once, under its job span, with its outcome
    spans = receiver.wait_for(
        lambda s: (
            {"execute_tool sleepy", "execute_tool patient"} <= {x.name for x in s}
            and sum(1 for x in s if x.name == "process llmq") >= 2
        )
    )
    jobs = {x.attributes["llmq.job_id"]: x for x in spans if x.name == "process llmq"}
    (timed_out,) = [x for x in spans if x.name == "execute_tool sleepy"]
    (cancelled,) = [x for x in spans if x.name == "execute_tool patient"]
    assert timed_out.parent_span_id == jobs[slow.id].span_id
    assert timed_out.attributes["llmq.tool.outcome"] == "timeout" and timed_out.attributes["error.type"] == "timeout"
    assert cancelled.parent_span_id == jobs[handle.id].span_id
    assert cancelled.attributes["llmq.tool.outcome"] == "cancelled"
    assert cancelled.attributes["error.type"] == "JobCancelledError" and cancelled.status_code == 2
    samples = _scrape(traced_worker)
    assert samples[("llm_tool_calls_total", (("outcome", "timeout"), ("tool", "sleepy")))] == 1
    assert samples[("llm_tool_calls_total", (("outcome", "cancelled"), ("tool", "patient")))] == 1


def test_a_requeued_run_links_to_the_run_before_it(
    start_traced_worker: TracedWorker, producer: Client, receiver: OTLPReceiver, tmp_path: Path
) -> None:
    # Given a worker that re-queues any wait over 0.2 s, and a job whose first request is told to
    # come back in 1 s: the job runs twice, as two deliveries
    config = tmp_path / "llmq.toml"
    config.write_text("max_inworker_wait_s = 0.2\nmax_requeues = 3\n")
    start_traced_worker(config)
    handle = producer.submit(_job("openai:gpt-4o~429@1"))
    assert handle.result(timeout=60).status == "succeeded"
    # Then both runs are job spans of the one trace, children of the submit span
    spans = receiver.wait_for(
        lambda s: sum(1 for x in s if x.name == "process llmq" and x.attributes["llmq.job_id"] == handle.id) >= 2
    )
    first, second = sorted(
        (x for x in spans if x.name == "process llmq" and x.attributes["llmq.job_id"] == handle.id),
        key=lambda x: x.attributes["llmq.run"],
    )
    assert (first.attributes["llmq.run"], second.attributes["llmq.run"]) == (1, 2)
    assert first.trace_id == second.trace_id and first.parent_span_id == second.parent_span_id
    assert "llmq.requeue" in [name for name, _ in first.events]
    # and the second links to the first: the span the earlier run really exported
    assert first.links == [] and second.links == [(first.trace_id, first.span_id)]

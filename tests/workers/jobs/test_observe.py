"""The per-job observer: decision metrics, span events, and per-trace sampled JSON log lines."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import INVALID_SPAN
from prometheus_client import CollectorRegistry

from workers.contract import Attempt, CompletionJob, CompletionResult, ErrorInfo, Timings, Usage, monitor_repr
from workers.jobs.decisions import DecisionMetrics, build_decision_metrics
from workers.jobs.observe import JobObserver, sampled
from workers.llm.model import CallReport
from workers.runtime.logs import JsonFormatter

SECRET = "sk-ant-api03-VERYSECRETvalue0123456789"


@pytest.fixture
def lines() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("test.llmq.observe")
    logger.handlers = [handler]
    logger.setLevel(logging.INFO)
    logger.propagate = False
    yield logger, stream


def _job(job_id: str, traceparent: str | None = None) -> CompletionJob:
    return CompletionJob(
        id=job_id, model="openai:gpt-4o", messages=[{"role": "user", "content": "hi"}], traceparent=traceparent
    )


def _result(job_id: str, status: str = "succeeded", total_s: float = 0.5) -> CompletionResult:
    return CompletionResult(
        id=job_id,
        status=status,  # type: ignore[arg-type]
        model_used="openai:gpt-4o",
        usage=Usage(prompt_tokens=5, completion_tokens=7),
        attempts=[Attempt(model="openai:gpt-4o", status="succeeded")],
        error=ErrorInfo(type="server_error", message=f"boom {SECRET}") if status == "failed" else None,
        timings=Timings(total_s=total_s),
    )


def _parsed(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def _trace_sampled_in(rate: float, want: bool) -> str:
    for i in range(1000):
        trace_id = f"{i:032x}"
        if sampled(trace_id, rate) is want:
            return f"00-{trace_id}-{1:016x}-01"
    raise AssertionError("no such trace id")


def test_sampling_is_deterministic_per_key_and_follows_the_rate() -> None:
    keys = [f"{i:032x}" for i in range(2000)]
    first = [sampled(k, 0.1) for k in keys]
    assert first == [sampled(k, 0.1) for k in keys]
    assert 100 < sum(first) < 300
    assert all(sampled(k, 1.0) for k in keys[:10]) and not any(sampled(k, 0.0) for k in keys[:10])


def test_an_unsampled_success_writes_nothing_but_a_failure_writes_every_line(
    lines: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, stream = lines
    out = _trace_sampled_in(0.1, False)
    ok = JobObserver(_job("ok", out), INVALID_SPAN, sample=0.1, logger=logger)
    ok.on_retry("openai:gpt-4o", "server_error", 1, 0.25)
    ok.finished(_result("ok"))
    assert stream.getvalue() == ""
    # same trace (unsampled), but the job failed: its retry and its job line are both written
    bad = JobObserver(_job("bad", out), INVALID_SPAN, sample=0.1, logger=logger)
    bad.on_retry("openai:gpt-4o", "server_error", 1, 0.25)
    bad.on_fallback("openai:gpt-4o", "openai:gpt-4o-mini", "server_error")
    bad.finished(_result("bad", "failed"))
    parsed = _parsed(stream)
    assert [p["event"] for p in parsed] == ["retry", "fallback", "job"]
    trace_id = out.split("-")[1]
    assert {p["trace_id"] for p in parsed} == {trace_id}
    assert parsed[0]["attempt"] == 1 and parsed[0]["backoff_s"] == 0.25
    assert parsed[2]["level"] == "warning" and parsed[2]["error_type"] == "server_error"
    assert SECRET not in stream.getvalue()


def test_sampled_and_slow_successes_are_written(lines: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = lines
    sampled_in = JobObserver(_job("in", _trace_sampled_in(0.1, True)), INVALID_SPAN, sample=0.1, logger=logger)
    sampled_in.finished(_result("in"))
    slow = JobObserver(_job("slow", _trace_sampled_in(0.1, False)), INVALID_SPAN, sample=0.1, slow_s=5, logger=logger)
    slow.finished(_result("slow", total_s=6.0))
    parsed = _parsed(stream)
    assert [(p["job_id"], p["status"], p["prompt_tokens"], p["completion_tokens"]) for p in parsed] == [
        ("in", "succeeded", 5, 7),
        ("slow", "succeeded", 5, 7),
    ]


def _metrics() -> tuple[CollectorRegistry, DecisionMetrics]:
    registry = CollectorRegistry()
    return registry, build_decision_metrics(registry)


def test_every_decision_is_counted_and_is_an_event_on_the_job_span(lines: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = lines
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    span = provider.get_tracer("t").start_span("process llmq")
    registry, metrics = _metrics()
    obs = JobObserver(_job("j"), span, metrics=metrics, sample=0.0, logger=logger)
    m = "openai:gpt-4o"
    obs.on_wait(m, "not_before", 1.5)
    obs.on_skip(m, "breaker_open")
    obs.on_breaker(m, "open")
    obs.on_tool("lookup", "timeout", 2.0)
    obs.on_call(
        CallReport(
            model=m, provider="openai", duration_s=0.3, ttft_s=0.1, usage=Usage(prompt_tokens=3, completion_tokens=4)
        )
    )
    obs.requeued("not_before", 12.0)
    span.end()

    def value(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, labels)

    assert value("llm_waits_total", model=m, reason="not_before") == 1
    assert value("llm_wait_seconds_total", model=m, reason="not_before") == 1.5
    assert value("llm_skips_total", model=m, reason="breaker_open") == 1
    assert value("llm_breaker_transitions_total", model=m, state="open") == 1
    assert value("llm_tool_calls_total", tool="lookup", outcome="timeout") == 1
    assert value("llmq_requeues_total", reason="not_before") == 1
    genai = {"gen_ai_operation_name": "chat", "gen_ai_provider_name": "openai", "gen_ai_request_model": "gpt-4o"}
    assert value("gen_ai_client_operation_duration_seconds_count", **genai, error_type="") == 1
    assert value("gen_ai_client_time_to_first_chunk_seconds_count", **genai) == 1
    assert value("gen_ai_client_token_usage_sum", **genai, gen_ai_token_type="output") == 4
    (finished,) = exporter.get_finished_spans()
    assert [e.name for e in finished.events] == [
        "llmq.wait",
        "llmq.skip",
        "llmq.breaker",
        "llmq.requeue",
    ]
    # the breaker line is written at once; a re-queue writes the job's held lines even unsampled
    assert [p["event"] for p in _parsed(stream)] == ["breaker", "wait", "skip", "tool", "requeue"]


def test_task_events_show_a_short_repr_without_content() -> None:
    job = _job("j1").model_dump(mode="json")
    job["messages"] = [{"role": "user", "content": "my medical history is ..."}]
    shown = monitor_repr(job)
    assert "medical" not in shown
    summary = json.loads(shown[1:-2])
    assert summary == {
        "id": "j1",
        "model": "openai:gpt-4o",
        "fallbacks": [],
        "tenant": "default",
        "messages": 1,
        "chars": len("my medical history is ..."),
        "tools": 0,
        "max_tokens": 1024,
        "stream": True,
    }


def test_a_job_answered_by_the_response_cache_says_so_on_its_span_and_log_line(
    lines: tuple[logging.Logger, io.StringIO],
) -> None:
    """Its usage is the answer's (used once, by the job that called): the span and the line say
    ``cached``, so a trace or log reader does not count those tokens again."""
    logger, stream = lines
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    for job_id, cached in (("hit", True), ("live", False)):
        span = provider.get_tracer("t").start_span("process llmq")
        result = _result(job_id).model_copy(update={"cached": cached, "cost_usd": 0.0 if cached else 0.01})
        JobObserver(_job(job_id), span, sample=1.0, logger=logger).finished(result)
        span.end()
    hit, live = (s.attributes or {} for s in exporter.get_finished_spans())
    assert hit["llmq.cached"] is True and "llmq.cached" not in live
    assert [(line["job_id"], line["cached"]) for line in _parsed(stream)] == [("hit", True), ("live", False)]

"""The span helpers of workers/llm/tracing.py, on an in-memory exporter."""

from __future__ import annotations

import threading

import pytest
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from workers.llm.tracing import (
    NO_TRACER,
    TOOL_CONTENT_CHARS,
    GenAI,
    add_event,
    end_tool_span,
    set_prompt,
    start_tool_span,
    tool_span,
)


@pytest.fixture
def spans() -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


def test_tool_span_is_a_child_named_after_the_tool(spans: tuple[TracerProvider, InMemorySpanExporter]) -> None:
    provider, exporter = spans
    tracer = provider.get_tracer("t")
    with tracer.start_as_current_span("process llmq") as job:
        with tool_span(tracer, "get_weather", call_id="call_1") as span:
            set_prompt(span, "support", 3)
        add_event("llmq.wait", {"llmq.reason": "not_before"})
    tool, parent = exporter.get_finished_spans()
    assert tool.name == "execute_tool get_weather"
    assert tool.kind == SpanKind.INTERNAL
    assert tool.parent is not None and tool.parent.span_id == job.get_span_context().span_id
    assert tool.attributes is not None
    assert tool.attributes[GenAI.TOOL_NAME] == "get_weather"
    assert tool.attributes[GenAI.TOOL_CALL_ID] == "call_1"
    assert tool.attributes[GenAI.PROMPT_VERSION] == "3"
    assert [e.name for e in parent.events] == ["llmq.wait"]


def test_a_failing_tool_records_its_error_type_without_the_secret(
    spans: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    provider, exporter = spans
    with pytest.raises(TimeoutError), tool_span(provider.get_tracer("t"), "slow"):
        raise TimeoutError("key sk-proj-abcdefghijklmnopqrstuvwxyz0123456789 leaked")
    (span,) = exporter.get_finished_spans()
    assert span.attributes is not None and span.attributes[GenAI.ERROR_TYPE] == "TimeoutError"
    assert span.status.status_code == StatusCode.ERROR
    assert "abcdefghijklmnop" not in (span.status.description or "")


def test_the_default_tracer_records_nothing() -> None:
    with tool_span(NO_TRACER, "x") as span:
        assert not span.is_recording()


def test_a_tool_span_started_for_another_thread_parents_on_the_job_span(
    spans: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    provider, exporter = spans
    tracer = provider.get_tracer("t")
    with tracer.start_as_current_span("process llmq") as job:
        parent = otel_context.get_current()
    # Given: the job span is no longer current (as on a worker pool's thread)
    found: list[str] = []

    def handler() -> None:
        # the handler's thread attaches the call's span: what it starts is a grandchild of the job
        token = otel_context.attach(trace.set_span_in_context(span, parent))
        try:
            with tracer.start_as_current_span("inner"):
                found.append("ran")
        finally:
            otel_context.detach(token)

    span = start_tool_span(tracer, "get_capital", call_id="call_9", parent=parent)
    thread = threading.Thread(target=handler)
    thread.start()
    thread.join(10)
    end_tool_span(span, "ok")
    done = {s.name: s for s in exporter.get_finished_spans()}
    tool, inner = done["execute_tool get_capital"], done["inner"]
    assert found == ["ran"]
    assert tool.parent is not None and tool.parent.span_id == job.get_span_context().span_id
    assert inner.parent is not None and inner.parent.span_id == tool.context.span_id
    assert tool.kind == SpanKind.INTERNAL
    assert tool.attributes is not None
    assert tool.attributes[GenAI.OPERATION] == "execute_tool"
    assert tool.attributes[GenAI.TOOL_CALL_ID] == "call_9"
    assert tool.attributes[GenAI.TOOL_OUTCOME] == "ok"
    assert GenAI.ERROR_TYPE not in tool.attributes and GenAI.TOOL_ARGUMENTS not in tool.attributes
    assert tool.status.status_code == StatusCode.UNSET


def test_an_ended_tool_span_carries_the_outcome_and_redacted_capped_content(
    spans: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    provider, exporter = spans
    tracer = provider.get_tracer("t")
    secret = "sk-proj-TOOLSPANsecret0123456789abcdef"
    span = start_tool_span(tracer, "boom", call_id="c1", parent=None)
    end_tool_span(
        span,
        "error",
        error_type="RuntimeError",
        message=f"RuntimeError: kaboom {secret}",
        arguments='{"key": "' + secret + '"}',
        result="x" * (TOOL_CONTENT_CHARS * 2),
    )
    (tool,) = exporter.get_finished_spans()
    assert tool.attributes is not None
    assert tool.attributes[GenAI.TOOL_OUTCOME] == "error"
    assert tool.attributes[GenAI.ERROR_TYPE] == "RuntimeError"
    assert tool.status.status_code == StatusCode.ERROR
    assert secret not in repr(tool.attributes) and secret not in (tool.status.description or "")
    assert "kaboom" in (tool.status.description or "")
    assert len(str(tool.attributes[GenAI.TOOL_RESULT])) == TOOL_CONTENT_CHARS
    assert '"key"' in str(tool.attributes[GenAI.TOOL_ARGUMENTS])

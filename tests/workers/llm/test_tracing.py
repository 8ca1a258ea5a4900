"""The span helpers of workers/llm/tracing.py, on an in-memory exporter."""

from __future__ import annotations

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from workers.llm.tracing import NO_TRACER, GenAI, add_event, set_prompt, tool_span


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

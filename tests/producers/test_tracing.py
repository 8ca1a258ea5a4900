"""Producer side: the submit span's context travels in the job; monitors get a short repr."""

from __future__ import annotations

import json

import redis
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import NoOpTracer, SpanKind

from producers import Client
from producers.tracing import incoming_trace
from tests.support.brokers import queued_payloads
from workers.connections.schedule import tenant_list


def _queued(client: redis.Redis) -> dict:
    (raw,) = queued_payloads(client, "llmq")
    return json.loads(raw)


def test_the_message_carries_the_submit_span_and_no_content_for_monitors(
    redis_url: str, redis_client: redis.Redis
) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    with Client(redis_url, tracer=provider.get_tracer("t")) as client:
        handle = client.submit({"model": "openai:gpt-4o", "messages": [{"role": "user", "content": "private words"}]})
    (span,) = exporter.get_finished_spans()
    assert span.name == "send llmq" and span.kind == SpanKind.PRODUCER
    message = _queued(redis_client)
    headers = message["headers"]
    assert "private words" not in headers["argsrepr"] and handle.id in headers["argsrepr"]
    assert headers["kwargsrepr"] == "{}"
    body = json.loads(__import__("base64").b64decode(message["body"]))
    job = body[0][0]
    trace_id = format(span.context.trace_id, "032x")
    span_id = format(span.context.span_id, "016x")
    assert job["traceparent"] == f"00-{trace_id}-{span_id}-{int(span.context.trace_flags):02x}"
    assert int(job["traceparent"][-2:], 16) & 1  # sampled


def test_without_tracing_the_job_carries_no_trace_and_the_caller_trace_passes_through(
    redis_url: str, redis_client: redis.Redis
) -> None:
    caller = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    with Client(redis_url, tracer=NoOpTracer()) as client:
        client.submit({"model": "openai:gpt-4o", "messages": [{"role": "user", "content": "x"}]})
        first = _queued(redis_client)
        redis_client.delete(tenant_list("llmq", "normal", "default"))
        client.submit({"model": "openai:gpt-4o", "messages": [{"role": "user", "content": "x"}]}, traceparent=caller)
        second = _queued(redis_client)
    decode = lambda m: json.loads(__import__("base64").b64decode(m["body"]))[0][0]  # noqa: E731
    assert "traceparent" not in decode(first)
    assert decode(second)["traceparent"] == caller


def test_incoming_trace_accepts_only_valid_w3c_headers() -> None:
    good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    assert incoming_trace({"traceparent": good, "tracestate": "a=b"}) == {"traceparent": good, "tracestate": "a=b"}
    assert incoming_trace({"traceparent": "00-00000000000000000000000000000000-00f067aa0ba902b7-01"}) == {}
    assert incoming_trace({"traceparent": "garbage"}) == {}
    assert incoming_trace({}) == {}

"""The job span: child of the job's traceparent, and a later run links to the earlier one."""

from __future__ import annotations

import redis
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import NoOpTracer, SpanKind

from workers.contract import CompletionJob, JobKeys
from workers.jobs.spans import start_job_span

PARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def test_each_run_is_a_child_of_the_submit_span_and_links_to_the_run_before(redis_client: redis.Redis) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("t")
    job = CompletionJob(
        id="j-span", model="openai:gpt-4o", messages=[{"role": "user", "content": "x"}], traceparent=PARENT
    )
    keys = JobKeys(job.id)
    first = start_job_span(tracer, job, "llmq", 1, redis_client, keys)
    first.end()
    second = start_job_span(tracer, job, "llmq", 2, redis_client, keys)
    second.end()
    a, b = exporter.get_finished_spans()
    assert a.name == b.name == "process llmq" and a.kind == SpanKind.CONSUMER
    for span in (a, b):
        assert span.parent is not None and span.parent.span_id == 0x00F067AA0BA902B7
        assert span.context.trace_id == 0x4BF92F3577B34DA6A3CE929D0E0E4736
    assert not a.links
    (link,) = b.links
    assert link.context.span_id == a.context.span_id
    assert b.attributes is not None and b.attributes["llmq.run"] == 2 and b.attributes["llmq.job_id"] == "j-span"


def test_a_no_op_tracer_costs_no_redis_round_trip(redis_client: redis.Redis) -> None:
    job = CompletionJob(id="j-noop", model="openai:gpt-4o", messages=[{"role": "user", "content": "x"}])
    span = start_job_span(NoOpTracer(), job, "llmq", 1, redis_client, JobKeys(job.id))
    assert not span.is_recording()
    assert not redis_client.exists(JobKeys(job.id).meta)


def test_the_end_user_is_kept_in_telemetry() -> None:
    from workers.jobs.spans import job_attributes

    job = CompletionJob(model="openai:gpt-4o", messages=[{"role": "user", "content": "x"}], user="end-user-9")
    assert job_attributes(job)["user.id"] == "end-user-9"
    anonymous = CompletionJob(model="openai:gpt-4o", messages=[{"role": "user", "content": "x"}])
    assert "user.id" not in job_attributes(anonymous)

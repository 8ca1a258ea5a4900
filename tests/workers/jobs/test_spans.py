"""The job span: child of the job's traceparent, and a later run links to the earlier one."""

from __future__ import annotations

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import NoOpTracer, SpanKind, use_span

from workers.contract import CompletionJob
from workers.jobs.spanids import JobSpanIds
from workers.jobs.spans import job_attributes, job_trace_id, run_span_id, start_job_span

PARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def _worker() -> tuple[TracerProvider, InMemorySpanExporter]:
    """A worker process's provider (the id generator of workers/runtime/tracing.py)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(id_generator=JobSpanIds())
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


def _run(job: CompletionJob, run: int) -> ReadableSpan:
    """Run ``run`` of ``job`` in a fresh worker process (nothing shared with the earlier run)."""
    provider, exporter = _worker()
    start_job_span(provider.get_tracer("t"), job, "llmq", run).end()
    (span,) = exporter.get_finished_spans()
    return span


def test_each_run_is_a_child_of_the_submit_span_and_links_to_the_run_before() -> None:
    job = CompletionJob(
        id="j-span", model="openai:gpt-4o", messages=[{"role": "user", "content": "x"}], traceparent=PARENT
    )
    a, b = _run(job, 1), _run(job, 2)
    assert a.name == b.name == "process llmq" and a.kind == SpanKind.CONSUMER
    for span in (a, b):
        assert span.parent is not None and span.parent.span_id == 0x00F067AA0BA902B7
        assert span.context is not None and span.context.trace_id == 0x4BF92F3577B34DA6A3CE929D0E0E4736
    assert not a.links
    (link,) = b.links
    assert a.context is not None and b.context is not None
    assert (link.context.trace_id, link.context.span_id) == (a.context.trace_id, a.context.span_id)
    assert link.attributes == {"llmq.link": "previous_run"}
    assert a.context.span_id != b.context.span_id
    assert b.attributes is not None and b.attributes["llmq.run"] == 2 and b.attributes["llmq.job_id"] == "j-span"


def test_a_redelivered_run_finds_the_earlier_run_without_redis_and_in_the_same_trace_without_a_parent() -> None:
    # Given a job that came without a traceparent, run three times by three worker processes
    job = CompletionJob(id="j-orphan", model="openai:gpt-4o", messages=[{"role": "user", "content": "x"}])
    runs = [_run(job, n) for n in (1, 2, 3)]
    # Then every run is a root span of the job's one trace, each linked to the run just before it
    assert all(s.parent is None for s in runs)
    assert {s.context.trace_id for s in runs if s.context} == {job_trace_id("j-orphan")}
    assert [s.context.span_id for s in runs if s.context] == [run_span_id("j-orphan", n) for n in (1, 2, 3)]
    assert [[link.context.span_id for link in s.links] for s in runs] == [
        [],
        [run_span_id("j-orphan", 1)],
        [run_span_id("j-orphan", 2)],
    ]


def test_only_the_job_span_takes_derived_ids() -> None:
    provider, exporter = _worker()
    tracer = provider.get_tracer("t")
    job = CompletionJob(id="j-ids", model="openai:gpt-4o", messages=[{"role": "user", "content": "x"}])
    with use_span(start_job_span(tracer, job, "llmq", 1), end_on_exit=True):
        tracer.start_span("chat gpt-4o").end()
        tracer.start_span("chat gpt-4o").end()
    first, second, process = exporter.get_finished_spans()
    assert process.context is not None and process.context.span_id == run_span_id("j-ids", 1)
    ids = {s.context.span_id for s in (first, second) if s.context}
    assert len(ids) == 2 and run_span_id("j-ids", 1) not in ids
    assert all(s.parent is not None and s.parent.span_id == run_span_id("j-ids", 1) for s in (first, second))
    # and other jobs' and runs' ids differ
    assert len({run_span_id(j, n) for j in ("a", "b") for n in (1, 2)}) == 4


def test_a_no_op_tracer_builds_nothing() -> None:
    job = CompletionJob(id="j-noop", model="openai:gpt-4o", messages=[{"role": "user", "content": "x"}])
    span = start_job_span(NoOpTracer(), job, "llmq", 2)
    assert not span.is_recording()


def test_the_end_user_is_kept_in_telemetry() -> None:
    job = CompletionJob(model="openai:gpt-4o", messages=[{"role": "user", "content": "x"}], user="end-user-9")
    assert job_attributes(job)["user.id"] == "end-user-9"
    anonymous = CompletionJob(model="openai:gpt-4o", messages=[{"role": "user", "content": "x"}])
    assert "user.id" not in job_attributes(anonymous)

"""The job span: ``process {queue}`` (CONSUMER), a child of the producer's submit span.

The parent comes from the job's own ``traceparent`` (not from Celery headers), so it survives
re-queues and redelivery. A later run of the same job (re-queued, or redelivered after a worker
died) links to the run before it without asking Redis: a run's span id is derived from the job id
and its run number (the claim counts runs), by :class:`~workers.jobs.spanids.JobSpanIds`, the id
generator of the worker's tracer provider (apart, so that the OpenTelemetry SDK loads only where
tracing is configured), so run ``n`` knows run ``n - 1``'s span context. A job without a
``traceparent`` gets a trace id derived from its id, so all its runs share one trace.
"""

from __future__ import annotations

import hashlib
from contextvars import ContextVar
from decimal import Decimal

from opentelemetry import trace
from opentelemetry.trace import Link, NoOpTracer, Span, SpanContext, SpanKind, TraceFlags, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import AttributeValue

from workers.accounting.prices import PriceBook
from workers.contract import CompletionJob, Usage
from workers.jobs.chain import Instrumentation
from workers.llm.tracing import GenAI

__all__ = ["JOB_SPAN_IDS", "instrumentation", "job_attributes", "job_trace_id", "run_span_id", "start_job_span"]

_PROPAGATOR = TraceContextTextMapPropagator()
#: The ids the next span started on this thread/greenlet takes: set by :func:`start_job_span`
#: around its ``start_span`` call only, so every other span keeps random ids.
JOB_SPAN_IDS: ContextVar[tuple[int, int] | None] = ContextVar("llmq_job_span_ids", default=None)
#: The link's attribute on a later run's job span.
PREVIOUS_RUN: dict[str, AttributeValue] = {"llmq.link": "previous_run"}


def _derived(text: str, size: int, person: bytes) -> int:
    value = int.from_bytes(hashlib.blake2b(text.encode(), digest_size=size, person=person).digest(), "big")
    return value or 1  # all-zero ids are invalid


def run_span_id(job_id: str, run: int) -> int:
    """The span id of run ``run`` (1, 2, …) of job ``job_id``: the same in every worker process."""
    return _derived(f"{job_id}\x00{run}", 8, b"llmq-run")


def job_trace_id(job_id: str) -> int:
    """The trace id of a job that came without a ``traceparent``: all its runs share it."""
    return _derived(job_id, 16, b"llmq-trace")


def _prompt_attributes(job: CompletionJob) -> dict[str, AttributeValue]:
    """``gen_ai.prompt.name``/``version`` of a published prompt (the producer resolved the label)."""
    prompt = job.prompt
    if prompt is None:
        return {}
    attrs: dict[str, AttributeValue] = {GenAI.PROMPT_NAME: prompt.name}
    if prompt.version is not None:
        attrs[GenAI.PROMPT_VERSION] = str(prompt.version)
    return attrs


def job_attributes(job: CompletionJob) -> dict[str, AttributeValue]:
    attrs: dict[str, AttributeValue] = {GenAI.JOB_ID: job.id, GenAI.TENANT: job.tenant, **_prompt_attributes(job)}
    if job.user:  # the end user the producer named (OpenAI's ``user``), OpenTelemetry's ``user.id``
        attrs[GenAI.USER_ID] = job.user
    return attrs


def instrumentation(job: CompletionJob, prices: PriceBook, record_content: bool) -> Instrumentation:
    """The chain's span settings for ``job``: its ids on every attempt, priced with ``prices``."""

    def price(model_id: str, usage: Usage) -> Decimal | None:
        try:
            return prices.lookup(model_id).cost(usage)
        except Exception:  # unpriced under "reject": no cost attribute
            return None

    return Instrumentation(price=price, attributes=job_attributes(job), record_content=record_content)


def start_job_span(tracer: Tracer, job: CompletionJob, queue: str, run: int) -> Span:
    """Start (not activate) the job span of run ``run``, linked to run ``run - 1``'s span.

    The ids are the derived ones when ``tracer`` comes from a provider built with
    :class:`~workers.jobs.spanids.JobSpanIds` (the worker's, ``workers/runtime/tracing.py``); the link assumes so."""
    parent = None
    if job.traceparent:
        carrier = {"traceparent": job.traceparent}
        if job.tracestate:
            carrier["tracestate"] = job.tracestate
        parent = _PROPAGATOR.extract(carrier)
    name = f"process {queue}"
    if isinstance(tracer, NoOpTracer):  # tracing off: no attribute is built
        return tracer.start_span(name, context=parent, kind=SpanKind.CONSUMER)
    parent_context = trace.get_current_span(parent).get_span_context() if parent is not None else None
    trace_id = parent_context.trace_id if parent_context is not None and parent_context.is_valid else 0
    trace_id = trace_id or job_trace_id(job.id)
    links: tuple[Link, ...] = ()
    if run > 1:
        earlier = SpanContext(trace_id, run_span_id(job.id, run - 1), is_remote=True, trace_flags=TraceFlags(1))
        links = (Link(earlier, PREVIOUS_RUN),)
    attributes: dict[str, AttributeValue] = {
        "messaging.system": "celery",
        "messaging.operation.type": "process",
        "messaging.destination.name": queue,
        "messaging.message.id": job.id,
        GenAI.REQUEST_MODEL: job.model,
        "llmq.run": run,
        **job_attributes(job),
    }
    token = JOB_SPAN_IDS.set((trace_id, run_span_id(job.id, run)))
    try:
        return tracer.start_span(name, context=parent, kind=SpanKind.CONSUMER, attributes=attributes, links=links)
    finally:
        JOB_SPAN_IDS.reset(token)

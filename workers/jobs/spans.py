"""The job span: ``process {queue}`` (CONSUMER), a child of the producer's submit span.

The parent comes from the job's own ``traceparent`` (not from Celery headers), so it survives
re-queues and redelivery. Each run records its span context in the job's metadata hash; a later
run of the same job (re-queued, or redelivered after a worker died) links to the run before it.
That costs one Redis round trip per job, only while tracing records.
"""

from __future__ import annotations

from decimal import Decimal

import redis
from opentelemetry.trace import Span, SpanContext, SpanKind, TraceFlags, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import AttributeValue

from workers.accounting.prices import PriceBook
from workers.contract import CompletionJob, JobKeys, Usage
from workers.jobs.chain import Instrumentation
from workers.llm.tracing import GenAI

__all__ = ["instrumentation", "job_attributes", "start_job_span"]

_PROPAGATOR = TraceContextTextMapPropagator()
#: Field of the job's metadata hash holding the last run's span context (``trace_id:span_id``).
_LAST_RUN = "span"


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


def start_job_span(
    tracer: Tracer, job: CompletionJob, queue: str, run: int, client: redis.Redis, keys: JobKeys
) -> Span:
    """Start (not activate) the job span of this run."""
    parent = None
    if job.traceparent:
        carrier = {"traceparent": job.traceparent}
        if job.tracestate:
            carrier["tracestate"] = job.tracestate
        parent = _PROPAGATOR.extract(carrier)
    span = tracer.start_span(f"process {queue}", context=parent, kind=SpanKind.CONSUMER)
    if not span.is_recording():
        return span
    span.set_attributes(
        {
            "messaging.system": "celery",
            "messaging.operation.type": "process",
            "messaging.destination.name": queue,
            "messaging.message.id": job.id,
            GenAI.REQUEST_MODEL: job.model,
            "llmq.run": run,
            **job_attributes(job),
        }
    )
    context = span.get_span_context()
    mine = f"{context.trace_id:032x}:{context.span_id:016x}"
    try:
        pipe = client.pipeline(transaction=False)
        pipe.hget(keys.meta, _LAST_RUN)
        pipe.hset(keys.meta, _LAST_RUN, mine)
        previous = pipe.execute()[0]
    except redis.RedisError:
        return span
    if previous:
        trace_hex, _, span_hex = (previous.decode() if isinstance(previous, bytes) else str(previous)).partition(":")
        try:
            earlier = SpanContext(int(trace_hex, 16), int(span_hex, 16), is_remote=True, trace_flags=TraceFlags(1))
        except ValueError:
            return span
        if earlier.is_valid:
            span.add_link(earlier, {"llmq.link": "previous_run"})
    return span

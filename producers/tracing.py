"""The submit span and the trace context a job carries to the worker (W3C ``traceparent``).

Producers import nothing of workers but the contract and the connections, so this is the producers' own small
OpenTelemetry set-up, configured by the standard ``OTEL_*`` variables only:

* an application that installed its own SDK tracer provider (``trace.set_tracer_provider``) gets
  its spans from it;
* else, with an OTLP endpoint (``OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT``) and ``OTEL_SDK_DISABLED``
  not ``true``, a process-wide provider exporting over OTLP/HTTP is built on first use;
* else every span is a no-op and a submit pays one ``is_recording()`` check.

:func:`submit_span` starts ``send {queue}`` (PRODUCER) as a child of the job's own ``traceparent``
when it has one (the gateway puts the caller's there), else of the current span, and writes its
own context into the job, so the worker's job span continues the trace whatever happens to the
message (re-queues, redelivery, another worker).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import NoOpTracer, ProxyTracerProvider, Span, SpanKind, Status, StatusCode, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from workers.contract import CompletionJob, monitor_repr

__all__ = ["context_of", "incoming_trace", "monitor_content", "producer_tracer", "send_options", "submit_span"]

_PROPAGATOR = TraceContextTextMapPropagator()
_LOCK = threading.Lock()
_TRACER: Tracer | None = None


def _configured() -> bool:
    env = os.environ
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if env.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() == "none":
        return False
    return bool(env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT"))


def producer_tracer(service_name: str = "llmq-producer") -> Tracer:
    """The process's producer tracer (see the module docstring), built once."""
    global _TRACER
    if _TRACER is not None:
        return _TRACER
    with _LOCK:
        if _TRACER is None:
            _TRACER = _build(service_name)
        return _TRACER


def _build(service_name: str) -> Tracer:
    if not isinstance(trace.get_tracer_provider(), ProxyTracerProvider):
        return trace.get_tracer("llmq.producers")  # the application's own SDK provider
    if not _configured():
        return NoOpTracer()
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    attributes = {} if os.environ.get("OTEL_SERVICE_NAME") else {"service.name": service_name}
    provider = TracerProvider(resource=Resource.create(attributes))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    return provider.get_tracer("llmq.producers")


def context_of(traceparent: str | None, tracestate: str | None = None) -> Context | None:
    """The remote context a ``traceparent`` header names (None when absent or malformed)."""
    if not traceparent:
        return None
    carrier = {"traceparent": traceparent}
    if tracestate:
        carrier["tracestate"] = tracestate
    ctx = _PROPAGATOR.extract(carrier)
    return ctx if trace.get_current_span(ctx).get_span_context().is_valid else None


def incoming_trace(headers: Mapping[str, str]) -> dict[str, str]:
    """The caller's W3C trace context from HTTP headers, as job fields (empty when absent or
    malformed): the gateway's submit span continues the caller's trace."""
    traceparent = headers.get("traceparent")
    if context_of(traceparent) is None or traceparent is None:
        return {}
    fields = {"traceparent": traceparent.strip().lower()}
    tracestate = headers.get("tracestate")
    if tracestate and len(tracestate) <= 512:
        fields["tracestate"] = tracestate
    return fields


@contextmanager
def submit_span(tracer: Tracer, job: CompletionJob, queue: str) -> Iterator[Span]:
    """``send {queue}`` around one submit; the job leaves carrying this span's context."""
    parent = context_of(job.traceparent, job.tracestate)
    with tracer.start_as_current_span(
        f"send {queue}", context=parent, kind=SpanKind.PRODUCER, record_exception=False, set_status_on_exception=False
    ) as span:
        if span.is_recording():
            span.set_attributes(
                {
                    "messaging.system": "celery",
                    "messaging.operation.type": "send",
                    "messaging.destination.name": queue,
                    "messaging.message.id": job.id,
                    "llmq.job_id": job.id,
                    "llmq.tenant": job.tenant,
                    "gen_ai.request.model": job.model,
                }
            )
            carrier: dict[str, str] = {}
            _PROPAGATOR.inject(carrier, context=trace.set_span_in_context(span))
            job.traceparent = carrier.get("traceparent", job.traceparent)
            job.tracestate = carrier.get("tracestate") or None
        try:
            yield span
        except BaseException as exc:
            if span.is_recording():
                span.set_attribute("error.type", type(exc).__name__)
                span.set_status(Status(StatusCode.ERROR))
            raise


def monitor_content() -> bool:
    """``LLMQ_MONITOR_CONTENT=1``: task events (Flower) show full job arguments."""
    return os.environ.get("LLMQ_MONITOR_CONTENT", "").strip().lower() in {"1", "true", "yes"}


def send_options(payload: dict[str, Any], *, content: bool = False) -> dict[str, Any]:
    """Extra ``send_task`` options: a short ``argsrepr`` for Flower and task events, unless
    content is turned on."""
    if content:
        return {}
    return {"argsrepr": monitor_repr(payload), "kwargsrepr": "{}"}

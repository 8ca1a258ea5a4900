"""The worker process's tracer provider, from the standard ``OTEL_*`` variables only.

Nothing is exported unless an OTLP endpoint is configured (``OTEL_EXPORTER_OTLP_ENDPOINT`` or
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``) and ``OTEL_SDK_DISABLED`` is not ``true``: then the chain
gets :data:`~workers.llm.tracing.NO_TRACER` and a span costs one ``is_recording()`` check. With an
endpoint, spans go over OTLP/HTTP (protobuf) through a batch processor; the SDK itself reads the
rest (``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_TRACES_SAMPLER[_ARG]``,
``OTEL_EXPORTER_OTLP_HEADERS``, ``OTEL_BSP_*``). The provider is the process's own (not the global
one), so embedding applications and tests keep theirs; ``producers/tracing.py`` is the
producers' twin (producers import nothing of workers).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

__all__ = ["build_tracer_provider", "tracing_configured"]


def tracing_configured(env: Mapping[str, str] | None = None) -> bool:
    env = os.environ if env is None else env
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if env.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() == "none":
        return False
    return bool(env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT"))


def build_tracer_provider(service_name: str = "llmq-worker") -> TracerProvider | None:
    """A provider exporting over OTLP/HTTP, or None when tracing is not configured."""
    if not tracing_configured():
        return None
    # the SDK and the exporter load here only: a worker without tracing does not hold them
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    from workers.jobs.spanids import JobSpanIds

    attributes = {} if os.environ.get("OTEL_SERVICE_NAME") else {"service.name": service_name}
    # job spans take ids derived from job id and run, so a redelivered run links to the one
    # before it without a Redis read (workers/jobs/spans.py)
    provider = TracerProvider(resource=Resource.create(attributes), id_generator=JobSpanIds())
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    return provider

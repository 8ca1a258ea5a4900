"""The worker's span id generator: random ids, except a job span's, derived from its job and run.

Apart from :mod:`workers.jobs.spans` because it subclasses the OpenTelemetry SDK's generator: the SDK
(~2 MB) is imported only by a worker whose tracing is configured (``workers/runtime/tracing.py``).
"""

from __future__ import annotations

from opentelemetry.sdk.trace.id_generator import RandomIdGenerator

from workers.jobs.spans import JOB_SPAN_IDS

__all__ = ["JobSpanIds"]


class JobSpanIds(RandomIdGenerator):
    """Random ids, except for a job span: :func:`~workers.jobs.spans.start_job_span` sets its derived
    ids for the one ``start_span`` call (the trace id is used only when the span has no parent)."""

    def generate_span_id(self) -> int:
        ids = JOB_SPAN_IDS.get()
        return super().generate_span_id() if ids is None else ids[1]

    def generate_trace_id(self) -> int:
        ids = JOB_SPAN_IDS.get()
        return super().generate_trace_id() if ids is None else ids[0]

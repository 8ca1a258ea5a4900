"""Span names and attributes of the OpenTelemetry GenAI conventions, and the helpers that emit them.

Only the OpenTelemetry *API* is used here, never the SDK: the worker process builds its tracer
provider from the ``OTEL_*`` variables (``workers/runtime/tracing.py``) and hands a tracer down;
without one, :data:`NO_TRACER` makes every span a non-recording no-op (one attribute check per
call). Every helper checks ``span.is_recording()`` before computing attributes, so a disabled
tracer costs next to nothing.

The spans of one job (all children of its ``process`` span):

* ``chat {model}`` (CLIENT): one per HTTP attempt, retries and fallbacks as siblings
  (``workers/llm/instrumented.py``);
* ``execute_tool {name}`` (INTERNAL): one per tool call, :func:`tool_span`, or
  :func:`start_tool_span`/:func:`end_tool_span` when the call runs on another thread;
* waits, skips, breaker changes and re-queues: span events on the job span.

Message content never goes into a span: :func:`content_attributes` is opt-in
(``LLMQ_TRACE_CONTENT``) and redacts what it records.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import NoOpTracer, Span, SpanKind, Status, StatusCode, Tracer
from opentelemetry.util.types import AttributeValue

from workers.contract import Message, redact

__all__ = [
    "NO_TRACER",
    "TOOL_CONTENT_CHARS",
    "GenAI",
    "add_event",
    "content_attributes",
    "end_tool_span",
    "error_status",
    "record_error",
    "set_prompt",
    "start_tool_span",
    "tool_span",
]

#: The tracer used when the process configured none: spans are non-recording no-ops.
NO_TRACER: Tracer = NoOpTracer()
#: Characters of a tool call's arguments or result recorded on its span (``LLMQ_TRACE_CONTENT`` only).
TOOL_CONTENT_CHARS = 4096


class GenAI:
    """Attribute names (semantic conventions v1.41 GenAI, plus ours under ``llmq.``)."""

    OPERATION = "gen_ai.operation.name"
    PROVIDER = "gen_ai.provider.name"
    REQUEST_MODEL = "gen_ai.request.model"
    REQUEST_MAX_TOKENS = "gen_ai.request.max_tokens"
    REQUEST_TEMPERATURE = "gen_ai.request.temperature"
    REQUEST_STREAM = "gen_ai.request.stream"
    RESPONSE_MODEL = "gen_ai.response.model"
    RESPONSE_ID = "gen_ai.response.id"
    RESPONSE_FINISH_REASONS = "gen_ai.response.finish_reasons"
    RESPONSE_TTFC = "gen_ai.response.time_to_first_chunk"
    INPUT_TOKENS = "gen_ai.usage.input_tokens"
    OUTPUT_TOKENS = "gen_ai.usage.output_tokens"
    CACHE_READ_TOKENS = "gen_ai.usage.cache_read.input_tokens"
    CACHE_WRITE_TOKENS = "gen_ai.usage.cache_write.input_tokens"
    #: Of the cache writes, those with a 1-hour TTL (not in the conventions: our own name).
    CACHE_WRITE_1H_TOKENS = "llmq.usage.cache_write_1h.input_tokens"
    PROMPT_NAME = "gen_ai.prompt.name"
    PROMPT_VERSION = "gen_ai.prompt.version"
    TOOL_NAME = "gen_ai.tool.name"
    TOOL_CALL_ID = "gen_ai.tool.call.id"
    TOOL_ARGUMENTS = "gen_ai.tool.call.arguments"
    TOOL_RESULT = "gen_ai.tool.call.result"
    INPUT_MESSAGES = "gen_ai.input.messages"
    OUTPUT_MESSAGES = "gen_ai.output.messages"
    ERROR_TYPE = "error.type"
    SERVER_ADDRESS = "server.address"
    SERVER_PORT = "server.port"
    # ours
    COST_USD = "llmq.cost_usd"
    ATTEMPT = "llmq.attempt"
    FALLBACK_INDEX = "llmq.fallback_index"
    JOB_ID = "llmq.job_id"
    TENANT = "llmq.tenant"
    TOOL_OUTCOME = "llmq.tool.outcome"
    USER_ID = "user.id"


def set_prompt(span: Span, name: str, version: int | str | None) -> None:
    """Mark a span (a ``chat`` span, or the job span) as rendered from a named prompt version."""
    if span.is_recording():
        span.set_attribute(GenAI.PROMPT_NAME, name)
        if version is not None:
            span.set_attribute(GenAI.PROMPT_VERSION, str(version))


def _tool_attributes(span: Span, name: str, call_id: str | None) -> None:
    if span.is_recording():
        span.set_attribute(GenAI.OPERATION, "execute_tool")
        span.set_attribute(GenAI.TOOL_NAME, name)
        if call_id:
            span.set_attribute(GenAI.TOOL_CALL_ID, call_id)


@contextmanager
def tool_span(
    tracer: Tracer, name: str, *, call_id: str | None = None, attributes: Mapping[str, AttributeValue] | None = None
) -> Iterator[Span]:
    """``execute_tool {name}``: wrap one tool run; an exception ends it with ``error.type``.

    A child of the current span (the job's), so call it on the job's thread/greenlet::

        with tool_span(ctx.tracer, call.function.name, call_id=call.id) as span:
            output = run_tool(...)
    """
    with tracer.start_as_current_span(
        f"execute_tool {name}", kind=SpanKind.INTERNAL, record_exception=False, set_status_on_exception=False
    ) as span:
        _tool_attributes(span, name, call_id)
        if attributes and span.is_recording():
            span.set_attributes(attributes)
        try:
            yield span
        except BaseException as exc:
            record_error(span, exc)
            raise


def start_tool_span(tracer: Tracer, name: str, *, call_id: str | None, parent: Context | None) -> Span:
    """``execute_tool {name}`` started (not activated) under ``parent``, for a call that runs on
    another thread: the tool loop starts it on the job's thread with the job span's context, the
    handler's thread attaches it, and :func:`end_tool_span` ends it with the call's outcome."""
    span = tracer.start_span(f"execute_tool {name}", context=parent, kind=SpanKind.INTERNAL)
    _tool_attributes(span, name, call_id)
    return span


def end_tool_span(
    span: Span,
    outcome: str,
    *,
    error_type: str | None = None,
    message: str | None = None,
    arguments: str | None = None,
    result: str | None = None,
) -> None:
    """End a :func:`start_tool_span` span: ``llmq.tool.outcome`` (bounded), and for a failure
    ``error.type`` plus an ERROR status with the (redacted, capped) message. ``arguments`` and
    ``result`` are recorded only when given (``LLMQ_TRACE_CONTENT``), redacted and capped."""
    if span.is_recording():
        span.set_attribute(GenAI.TOOL_OUTCOME, outcome)
        if arguments is not None:
            span.set_attribute(GenAI.TOOL_ARGUMENTS, redact(arguments)[:TOOL_CONTENT_CHARS])
        if result is not None:
            span.set_attribute(GenAI.TOOL_RESULT, redact(result)[:TOOL_CONTENT_CHARS])
        if error_type is not None:
            span.set_attribute(GenAI.ERROR_TYPE, error_type)
            span.set_status(Status(StatusCode.ERROR, redact(message)[:500] if message else None))
    span.end()


def error_status(exc: BaseException) -> Status:
    """An ERROR status with the error's message redacted and capped (provider error bodies can
    echo request content)."""
    message = getattr(exc, "message", None) or str(exc)
    return Status(StatusCode.ERROR, redact(message)[:500])


def record_error(span: Span, exc: BaseException | str) -> None:
    """``error.type`` (the error's class name, bounded) and an ERROR status; never the message
    unredacted."""
    if not span.is_recording():
        return
    if isinstance(exc, str):
        span.set_attribute(GenAI.ERROR_TYPE, exc)
        span.set_status(Status(StatusCode.ERROR))
        return
    span.set_attribute(GenAI.ERROR_TYPE, type(exc).__name__)
    span.set_status(error_status(exc))


def add_event(name: str, attributes: Mapping[str, AttributeValue], span: Span | None = None) -> None:
    """An event on ``span`` (default: the current span, i.e. the job's), if it records."""
    target = span if span is not None else trace.get_current_span()
    if target.is_recording():
        target.add_event(name, attributes)


def content_attributes(messages: Sequence[Message], output: str | None) -> dict[str, AttributeValue]:
    """Opt-in message content for a ``chat`` span, redacted (``LLMQ_TRACE_CONTENT=1``)."""
    inputs = [f"{m.role}: {redact(m.text)}" for m in messages]
    attrs: dict[str, AttributeValue] = {GenAI.INPUT_MESSAGES: inputs}
    if output is not None:
        attrs[GenAI.OUTPUT_MESSAGES] = [redact(output)]
    return attrs

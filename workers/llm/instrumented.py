"""The instrumented wrapper: one ``chat {model}`` CLIENT span per HTTP attempt, and its numbers.

Innermost in the chain, ``Retry( Metered( Guarded( Instrumented( Provider ))))``, so the span
covers the request and the read only: guard waits and budget reservations are not part of it
(they are events on the job span), and a skipped model has no span. Retries and fallbacks are
sibling spans under the job span. The span carries the GenAI attributes (request, response, usage,
time to first chunk, ``error.type``) plus ``llmq.cost_usd``, ``llmq.attempt`` and
``llmq.fallback_index``; the same numbers go to the hooks (``on_call``) for the GenAI histograms.

When the tracer does not record (no ``OTEL_*`` endpoint), the span is a no-op and no attribute is
computed; only the hook report remains.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from decimal import Decimal
from urllib.parse import urlsplit

from opentelemetry import trace
from opentelemetry.trace import NoOpTracer, Span, SpanKind
from opentelemetry.util.types import AttributeValue

from workers.contract import Usage, split_model_id
from workers.llm.base import ChatRequest, ChatStream, Completion
from workers.llm.errors import LLMQError, error_type_name
from workers.llm.model import CallReport, ChatModel, RunContext, WrappedStream
from workers.llm.tracing import GenAI, content_attributes, error_status

__all__ = ["InstrumentedModel", "PriceFn", "server_of"]

#: ``(model_id, usage) -> USD`` (None when unpriced): the cost on the span.
PriceFn = Callable[[str, Usage], Decimal | None]


def server_of(url: str | None) -> tuple[str | None, int | None]:
    """``server.address``/``server.port`` of a provider base URL."""
    if not url:
        return None, None
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80 if parts.scheme == "http" else None)
    return parts.hostname, port


class InstrumentedModel(ChatModel):
    def __init__(
        self,
        wrapped: ChatModel,
        ctx: RunContext,
        *,
        fallback_index: int = 0,
        price: PriceFn | None = None,
        server_url: str | None = None,
        attributes: Mapping[str, AttributeValue] | None = None,
        record_content: bool = False,
        provider_name: str | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.wrapped = wrapped
        self.model_id = wrapped.model_id
        self.ctx = ctx
        self.provider, self.native = split_model_id(self.model_id)
        #: ``gen_ai.provider.name``: the provider's (``azure.ai.openai``, ``aws.bedrock``...), not
        #: the configured name that prefixes the model id.
        if provider_name:
            self.provider = provider_name
        self.fallback_index = fallback_index
        self.price = price
        self.server = server_of(server_url)
        self.attributes = dict(attributes or {})
        self.record_content = record_content
        self.clock = clock
        self.span_name = f"chat {self.native}"
        # what every attempt's span carries, built once per model and job (not per attempt)
        static: dict[str, AttributeValue] = {
            GenAI.OPERATION: "chat",
            GenAI.PROVIDER: self.provider,
            GenAI.REQUEST_MODEL: self.native,
            GenAI.FALLBACK_INDEX: fallback_index,
        }
        host, port = self.server
        if host:
            static[GenAI.SERVER_ADDRESS] = host
        if port:
            static[GenAI.SERVER_PORT] = port
        static.update(self.attributes)
        self._static = static

    # --- the span ---------------------------------------------------------------------------------

    def _start(self, request: ChatRequest, stream: bool) -> Span:
        tracer = self.ctx.tracer
        if isinstance(tracer, NoOpTracer):  # tracing off: no attribute is built
            return tracer.start_span(self.span_name, kind=SpanKind.CLIENT)
        # all request attributes at the span's start, in one mapping (one validation pass, no lock per key)
        attrs = dict(self._static)
        attrs[GenAI.REQUEST_MAX_TOKENS] = request.params.max_tokens
        attrs[GenAI.REQUEST_STREAM] = stream
        attrs[GenAI.ATTEMPT] = sum(1 for a in self.ctx.attempts if a.status != "skipped") + 1
        if request.params.temperature is not None:
            attrs[GenAI.REQUEST_TEMPERATURE] = request.params.temperature
        return tracer.start_span(self.span_name, kind=SpanKind.CLIENT, attributes=attrs)

    def _finish(
        self,
        span: Span,
        request: ChatRequest,
        started: float,
        ttft_s: float | None,
        result: Completion | ChatStream | None,
        error: BaseException | None,
    ) -> None:
        usage = result.usage if result is not None else None
        error_type = error_type_name(error) if isinstance(error, LLMQError) else None
        if error is not None and error_type is None:
            error_type = type(error).__name__
        self.ctx.hooks.on_call(
            CallReport(
                model=self.model_id,
                provider=self.provider,
                duration_s=self.clock() - started,
                ttft_s=ttft_s,
                usage=usage,
                error_type=error_type,
            )
        )
        if not span.is_recording():
            span.end()
            return
        # the response's attributes in one mapping, set once
        attrs: dict[str, AttributeValue] = {}
        if ttft_s is not None:
            attrs[GenAI.RESPONSE_TTFC] = ttft_s
        if result is not None:
            _response_attributes(attrs, result)
            if usage is not None and self.price is not None:
                cost = self.price(self.model_id, usage)
                if cost is not None:
                    attrs[GenAI.COST_USD] = float(cost)
            if self.record_content and error is None:
                attrs.update(content_attributes(request.messages, result.text))
        if error is not None:
            attrs[GenAI.ERROR_TYPE] = error_type or "error"
            span.set_status(error_status(error))
        if attrs:
            span.set_attributes(attrs)
        span.end()

    # --- calls ------------------------------------------------------------------------------------

    def complete(self, request: ChatRequest) -> Completion:
        span = self._start(request, False)
        started = self.clock()
        try:
            with trace.use_span(span, end_on_exit=False, record_exception=False, set_status_on_exception=False):
                completion = self.wrapped.complete(request)
        except BaseException as exc:
            self._finish(span, request, started, None, None, exc)
            raise
        self._finish(span, request, started, None, completion, None)
        return completion

    def stream(self, request: ChatRequest) -> ChatStream:
        return _InstrumentedStream(self, request)


def _response_attributes(attrs: dict[str, AttributeValue], result: Completion | ChatStream) -> None:
    if result.response_model:
        attrs[GenAI.RESPONSE_MODEL] = result.response_model
    response_id = result.response_id or result.request_id
    if response_id:
        attrs[GenAI.RESPONSE_ID] = response_id
    if result.finish_reason:
        attrs[GenAI.RESPONSE_FINISH_REASONS] = [result.finish_reason]
    usage = result.usage
    if usage is not None and not usage.estimated:
        attrs[GenAI.INPUT_TOKENS] = usage.prompt_tokens
        attrs[GenAI.OUTPUT_TOKENS] = usage.completion_tokens
        if usage.cached_tokens:
            attrs[GenAI.CACHE_READ_TOKENS] = usage.cached_tokens
        if usage.cache_write_tokens:
            attrs[GenAI.CACHE_WRITE_TOKENS] = usage.cache_write_tokens
        if usage.cache_write_1h_tokens:
            attrs[GenAI.CACHE_WRITE_1H_TOKENS] = usage.cache_write_1h_tokens


class _InstrumentedStream(WrappedStream["InstrumentedModel"]):
    def __iter__(self) -> Iterator[str]:
        owner = self._owner
        span = owner._start(self._request, True)
        started = owner.clock()
        ttft: float | None = None
        error: BaseException | None = None
        inner: ChatStream | None = None
        try:
            inner = owner.wrapped.stream(self._request)
            self.adopt(inner)
            for text in inner:
                if ttft is None:
                    ttft = owner.clock() - started
                yield text
            self.finish_from_inner()
        except BaseException as exc:
            error = exc
            raise
        finally:
            if isinstance(error, GeneratorExit):
                error = None  # the consumer stopped reading (cancel): not an upstream failure
            owner._finish(span, self._request, started, ttft, inner, error)

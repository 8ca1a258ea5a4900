"""The instrumented wrapper: one chat span per attempt, hooks for the GenAI histograms, opt-in content."""

from __future__ import annotations

from decimal import Decimal

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tests.workers.llm.test_wrappers import ScriptedModel
from workers.contract import Message, RequestParams, Usage
from workers.llm.base import ChatRequest
from workers.llm.errors import RateLimitedError
from workers.llm.instrumented import InstrumentedModel, server_of
from workers.llm.model import CallReport, ChainHooks, RunContext
from workers.llm.retry import RetryingModel, RetryPolicy

SECRET = "sk-proj-CONTENTsecret0123456789abcdef"


class Reports(ChainHooks):
    def __init__(self) -> None:
        self.calls: list[CallReport] = []

    def on_call(self, report: CallReport) -> None:
        self.calls.append(report)


def _setup() -> tuple[InMemorySpanExporter, RunContext, Reports]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    hooks = Reports()
    return exporter, RunContext(sleep=lambda s: None, hooks=hooks, tracer=provider.get_tracer("t")), hooks


@pytest.mark.parametrize("stream", [True, False])
def test_each_attempt_is_a_sibling_chat_span_with_error_type(stream: bool) -> None:
    exporter, ctx, hooks = _setup()
    fake = ScriptedModel("openai:gpt-4o", [RateLimitedError("slow down", retry_after=0.01), ["a", "b"]])
    model = RetryingModel(
        InstrumentedModel(fake, ctx, price=lambda m, u: Decimal("0.25"), server_url="https://api.openai.com/v1"),
        RetryPolicy(),
        ctx,
    )
    request = ChatRequest(
        messages=[Message(role="user", content="hi")], params=RequestParams(max_tokens=10, temperature=0.2)
    )
    if stream:
        s = model.stream(request)
        assert "".join(s) == "ab"
    else:
        assert model.complete(request).text == "ab"
    first, second = exporter.get_finished_spans()
    assert first.name == second.name == "chat gpt-4o"
    assert first.attributes is not None and second.attributes is not None
    assert first.attributes["error.type"] == "rate_limited" and "error.type" not in second.attributes
    assert [first.attributes["llmq.attempt"], second.attributes["llmq.attempt"]] == [1, 2]
    assert second.attributes["gen_ai.request.stream"] is stream
    assert second.attributes["server.address"] == "api.openai.com" and second.attributes["server.port"] == 443
    assert second.attributes["gen_ai.response.finish_reasons"] == ("stop",)
    assert [c.error_type for c in hooks.calls] == ["rate_limited", None]
    assert (hooks.calls[1].ttft_s is not None) is stream


def test_content_is_recorded_only_when_turned_on_and_then_redacted() -> None:
    exporter, ctx, _ = _setup()
    request = ChatRequest(
        messages=[Message(role="user", content=f"my key is {SECRET}")], params=RequestParams(max_tokens=10)
    )
    InstrumentedModel(ScriptedModel("openai:m", [["fine"]]), ctx).complete(request)
    InstrumentedModel(ScriptedModel("openai:m", [["fine"]]), ctx, record_content=True).complete(request)
    off, on = exporter.get_finished_spans()
    assert off.attributes is not None and on.attributes is not None
    assert "gen_ai.input.messages" not in off.attributes
    (shown,) = on.attributes["gen_ai.input.messages"]
    assert shown.startswith("user: my key is") and SECRET not in shown
    assert on.attributes["gen_ai.output.messages"] == ("fine",)


def test_usage_and_cost_land_on_the_span() -> None:
    exporter, ctx, hooks = _setup()
    fake = ScriptedModel("anthropic:claude", [["x"]])
    model = InstrumentedModel(fake, ctx, price=lambda m, u: Decimal("0.5") if u.prompt_tokens == 3 else None)
    original = fake.complete

    def with_usage(request: ChatRequest):  # type: ignore[no-untyped-def]
        completion = original(request)
        completion.usage = Usage(prompt_tokens=3, completion_tokens=1, cached_tokens=2)
        completion.response_model = "claude-x-2026"
        return completion

    fake.complete = with_usage  # type: ignore[method-assign]
    model.complete(ChatRequest(messages=[], params=RequestParams(max_tokens=5)))
    (span,) = exporter.get_finished_spans()
    attrs = span.attributes
    assert attrs is not None
    assert attrs["gen_ai.provider.name"] == "anthropic" and attrs["gen_ai.response.model"] == "claude-x-2026"
    assert attrs["gen_ai.usage.input_tokens"] == 3 and attrs["gen_ai.usage.output_tokens"] == 1
    assert attrs["gen_ai.usage.cache_read.input_tokens"] == 2 and attrs["llmq.cost_usd"] == 0.5
    assert hooks.calls[0].usage is not None and hooks.calls[0].usage.completion_tokens == 1


def test_server_of() -> None:
    assert server_of("http://127.0.0.1:8790/v1") == ("127.0.0.1", 8790)
    assert server_of(None) == (None, None)

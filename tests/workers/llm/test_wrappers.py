"""Retry and fallback decisions, with a scripted fake model (fakes over mocks)."""

from __future__ import annotations

import random

import pytest

from tests.support.scripted import ListStream, ScriptedModel
from workers.contract import Alternative, RequestParams, TokenLogprob
from workers.llm.base import ANSWER_FIELDS, ChatRequest, Completion
from workers.llm.errors import (
    AllModelsFailedError,
    AuthenticationError,
    DeadlineExceededError,
    IncompleteStreamError,
    InsufficientQuotaError,
    LLMQError,
    RateLimitedError,
    RetryLaterError,
    ServerError,
)
from workers.llm.fallback import FallbackModel
from workers.llm.model import RunContext
from workers.llm.retry import RetryingModel, RetryPolicy, retry_delay

REQ = ChatRequest(messages=[], params=RequestParams(max_tokens=10))


def _ctx(**kw: object) -> tuple[RunContext, list[float]]:
    slept: list[float] = []
    return RunContext(sleep=slept.append, **kw), slept


def test_retry_delay_prefers_the_providers_wait() -> None:
    policy = RetryPolicy()
    assert retry_delay(RateLimitedError("x", retry_after=2.0), 0, policy) == 2.0
    # absurd or missing hints fall back to full-jitter backoff, capped
    rng = random.Random(1)
    for n in range(10):
        d = retry_delay(RateLimitedError("x", retry_after=10_000.0), n, policy, rng)
        assert 0 <= d <= min(0.5 * 2**n, 8.0)
    assert retry_delay(ServerError("x"), 0, policy, rng) <= 0.5


@pytest.mark.parametrize("stream", [True, False])
def test_retries_retryable_errors_then_succeeds(stream: bool) -> None:
    ctx, slept = _ctx()
    fake = ScriptedModel("openai:m", [RateLimitedError("slow down", retry_after=2.0), ServerError("boom"), ["a", "b"]])
    model = RetryingModel(fake, RetryPolicy(), ctx, rng=random.Random(0))
    text = "".join(model.stream(REQ)) if stream else model.complete(REQ).text
    assert text == "ab" and fake.calls == 3
    assert slept[0] == 2.0 and 0 <= slept[1] <= 1.0
    assert [a.error_type for a in ctx.attempts] == ["rate_limited", "server_error", None]
    assert ctx.attempts[0].wait_s == 2.0


@pytest.mark.parametrize("error", [AuthenticationError("no"), InsufficientQuotaError("broke")])
def test_never_retries_non_retryable(error: LLMQError) -> None:
    ctx, slept = _ctx()
    fake = ScriptedModel("openai:m", [error])
    with pytest.raises(type(error)):
        list(RetryingModel(fake, RetryPolicy(), ctx).stream(REQ))
    assert fake.calls == 1 and slept == []


def test_x_should_retry_overrides_the_type() -> None:
    ctx, _ = _ctx()
    fake = ScriptedModel("openai:m", [AuthenticationError("x", should_retry=True), ["ok"]])
    assert RetryingModel(fake, RetryPolicy(), ctx).complete(REQ).text == "ok"
    ctx, _ = _ctx()
    fake = ScriptedModel("openai:m", [ServerError("x", should_retry=False)])
    with pytest.raises(ServerError):
        RetryingModel(fake, RetryPolicy(), ctx).complete(REQ)
    assert fake.calls == 1


def test_gives_up_after_max_retries() -> None:
    ctx, slept = _ctx()
    fake = ScriptedModel("openai:m", [ServerError("down")])
    with pytest.raises(ServerError):
        RetryingModel(fake, RetryPolicy(max_retries=2), ctx).complete(REQ)
    assert fake.calls == 3 and len(slept) == 2


def test_long_waits_requeue_instead_of_sleeping() -> None:
    ctx, slept = _ctx(max_inworker_wait_s=10.0)
    fake = ScriptedModel("openai:m", [RateLimitedError("later", retry_after=30.0)])
    with pytest.raises(RetryLaterError) as info:
        RetryingModel(fake, RetryPolicy(), ctx).complete(REQ)
    assert info.value.retry_after == 30.0 and slept == []
    assert ctx.attempts[0].wait_s == 30.0


def test_deadline_stops_retrying() -> None:
    now = [100.0]
    ctx, slept = _ctx(clock=lambda: now[0], deadline=101.0)
    fake = ScriptedModel("openai:m", [RateLimitedError("later", retry_after=5.0)])
    with pytest.raises(DeadlineExceededError):
        RetryingModel(fake, RetryPolicy(), ctx).complete(REQ)
    assert fake.calls == 1 and slept == []


def test_no_retry_after_the_first_delta() -> None:
    ctx, _ = _ctx()
    fake = ScriptedModel("openai:m", [["a", IncompleteStreamError("cut")], ["never"]])
    seen: list[str] = []
    with pytest.raises(IncompleteStreamError):
        for t in RetryingModel(fake, RetryPolicy(), ctx).stream(REQ):
            seen.append(t)
    assert seen == ["a"] and fake.calls == 1


def test_fallback_moves_on_only_for_fallback_errors() -> None:
    ctx, _ = _ctx()
    a = ScriptedModel("openai:a", [InsufficientQuotaError("broke")])
    b = ScriptedModel("anthropic:b", [["hi"]])
    chain = FallbackModel([RetryingModel(a, RetryPolicy(), ctx), RetryingModel(b, RetryPolicy(), ctx)], ctx)
    stream = chain.stream(REQ)
    assert "".join(stream) == "hi" and stream.model_id == "anthropic:b"
    assert (a.calls, b.calls) == (1, 1)

    ctx, _ = _ctx()
    a = ScriptedModel("openai:a", [AuthenticationError("bad key")])
    b = ScriptedModel("anthropic:b", [["hi"]])
    with pytest.raises(AuthenticationError):
        FallbackModel([a, b], ctx).complete(REQ)
    assert b.calls == 0


def test_fallback_never_after_first_delta_and_skips_by_check() -> None:
    ctx, _ = _ctx()
    a = ScriptedModel("openai:a", [["x", ServerError("mid")]])
    b = ScriptedModel("openai:b", [["y"]])
    with pytest.raises(ServerError):
        list(FallbackModel([a, b], ctx).stream(REQ))
    assert b.calls == 0

    ctx, _ = _ctx()
    small = ScriptedModel("openai:small", [["never"]])
    big = ScriptedModel("openai:big", [["fits"]])
    chain = FallbackModel(
        [small, big], ctx, skip=lambda m: "window too small" if m.model_id.endswith("small") else None
    )
    assert chain.complete(REQ).text == "fits" and small.calls == 0
    assert ctx.attempts[0].status == "skipped" and ctx.attempts[0].message == "window too small"


def test_all_models_failed_names_each() -> None:
    ctx, _ = _ctx()
    models = [
        RetryingModel(ScriptedModel("openai:a", [ServerError("a")]), RetryPolicy(max_retries=0), ctx),
        RetryingModel(ScriptedModel("openai:b", [RateLimitedError("b")]), RetryPolicy(max_retries=0), ctx),
    ]
    with pytest.raises(AllModelsFailedError) as info:
        FallbackModel(models, ctx).complete(REQ)
    assert "openai:a: server_error" in str(info.value) and "openai:b: rate_limited" in str(info.value)


def test_a_wrapped_stream_takes_every_field_of_the_inner_answer() -> None:
    """A wrapper's stream is the answer it read: every ``Completion`` field (``ANSWER_FIELDS``),
    so a field added to the answer needs no line in each wrapper."""

    def inner() -> ListStream:
        stream = ListStream(["a", "b"])
        stream.response_id, stream.native_finish_reason, stream.ratelimit = "resp-1", "end_turn", {"x": 1.0}
        stream.logprobs = [TokenLogprob(token="a", logprob=-0.1)]
        stream.alternatives = [Alternative(index=1, content="ab")]
        return stream

    model = FallbackModel(
        [RetryingModel(ScriptedModel("openai:m", [inner]), RetryPolicy(), RunContext())], RunContext()
    )
    with model.stream(REQ) as stream:
        assert list(stream) == ["a", "b"]
    answer = stream.to_completion()
    assert set(ANSWER_FIELDS) == {f for f in Completion.__dataclass_fields__ if f != "text"}
    assert (answer.text, answer.response_id, answer.native_finish_reason) == ("ab", "resp-1", "end_turn")
    assert answer.ratelimit == {"x": 1.0} and answer.logprobs and answer.alternatives[0].content == "ab"

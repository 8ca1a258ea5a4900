"""The guard wrapper inside the retry loop: shared breaker, not-before, buckets and the TTFT limit.

Scripted fake models (fakes over mocks) under the real retry and fallback wrappers, with the real
Redis-backed :class:`SharedGuards`; clocks are injected and ``ctx.sleep`` advances them.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import pytest
import redis

from tests.support.doubles import FakeClock
from tests.support.scripted import ListStream, Outcome, ScriptedModel
from tests.support.waits import until
from workers.contract import RequestParams
from workers.guards.model import GuardedModel
from workers.guards.shared import SharedGuards
from workers.jobs.chain import build_chain
from workers.llm.base import ChatRequest, ChatStream, Completion, Provider
from workers.llm.errors import (
    AllModelsFailedError,
    BadRequestError,
    DeadlineExceededError,
    FirstTokenTimeoutError,
    InsufficientQuotaError,
    JobCancelledError,
    RateLimitedError,
    RetryLaterError,
    ServerError,
)
from workers.llm.fallback import FallbackModel
from workers.llm.instrumented import InstrumentedModel
from workers.llm.model import ChainHooks, ChatModel, ProviderModel, RunContext
from workers.llm.registry import ProviderRegistry
from workers.llm.retry import RetryingModel, RetryPolicy
from workers.llm.watchdog import Watchdog
from workers.routes import LLMQConfig, ModelConfig

A, B = "openai:a", "openai:b"
REQ = ChatRequest(messages=[], params=RequestParams(max_tokens=10), prompt_tokens=90)


class CountingHooks(ChainHooks):
    def __init__(self) -> None:
        self.events: list[tuple[str, ...]] = []

    def on_attempt(self, model: str, error_type: str | None) -> None:
        self.events.append(("attempt", model, str(error_type)))

    def on_wait(self, model: str, reason: str, seconds: float) -> None:
        self.events.append(("wait", model, reason))

    def on_requeue(self, model: str, reason: str, seconds: float) -> None:
        self.events.append(("requeue", model, reason))

    def on_skip(self, model: str, reason: str) -> None:
        self.events.append(("skip", model, reason))

    def on_breaker(self, model: str, state: str) -> None:
        self.events.append(("breaker", model, state))


def _config(**models: ModelConfig) -> LLMQConfig:
    return LLMQConfig(models={k.replace("_", ":"): v for k, v in models.items()})


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(5_000_000.0)


@pytest.fixture
def make_guards(redis_url: str, clock: FakeClock) -> Iterator[Callable[[LLMQConfig], SharedGuards]]:
    """A worker process's guards: own Redis client, shared (fake) clock."""
    made: list[tuple[SharedGuards, redis.Redis]] = []

    def make(config: LLMQConfig, start: bool = False) -> SharedGuards:
        client = redis.Redis.from_url(redis_url)
        guards = SharedGuards(client, config, clock=clock, local_clock=clock)
        made.append((guards, client))
        if start:
            guards.start()
            assert guards.wait_live()
        return guards

    yield make
    for guards, client in made:
        guards.stop()
        client.close()


def _ctx(clock: FakeClock, *, advance: bool = True, **kw: object) -> tuple[RunContext, list[float]]:
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        if advance:
            clock.now += seconds

    return RunContext(sleep=sleep, clock=clock, **kw), slept


def _chain(
    ctx: RunContext,
    guards: SharedGuards | None,
    *models: ChatModel,
    ttft: float | None = None,
    held: SharedGuards | None = None,
) -> ChatModel:
    wrapped = [
        RetryingModel(
            GuardedModel(m, ctx, guard=guards.for_model(m.model_id) if guards else None, ttft_limit_s=ttft),
            RetryPolicy(max_retries=2, initial_backoff_s=0.01),
            ctx,
        )
        for m in models
    ]
    return FallbackModel(wrapped, ctx, held=(lambda m: held.held_for(m.model_id)) if held else None)


def test_an_open_breaker_sends_every_worker_straight_to_the_next_model(make_guards, clock) -> None:
    config = _config(openai_a=ModelConfig(breaker_failures=2, breaker_cooldown_s=30))
    worker1, worker2 = make_guards(config), make_guards(config, start=True)
    ctx, _ = _ctx(clock)
    ctx.hooks = hooks = CountingHooks()
    a, b = ScriptedModel(A, [ServerError("down")]), ScriptedModel(B, [["hi"]])
    assert _chain(ctx, worker1, a, b).complete(REQ).text == "hi"
    assert a.calls == 2  # the second failure opened the breaker: the retry that followed was skipped
    assert [(x.model, x.status, x.error_type) for x in ctx.attempts] == [
        (A, "failed", "server_error"),
        (A, "failed", "server_error"),
        (A, "skipped", None),
        (B, "succeeded", None),
    ]
    assert ("breaker", A, "open") in hooks.events and ("skip", A, "breaker_open") in hooks.events

    ctx2, _ = _ctx(clock)
    a2, b2 = ScriptedModel(A, [["never"]]), ScriptedModel(B, [["hi"]])
    assert "".join(_chain(ctx2, worker2, a2, b2).stream(REQ)) == "hi"
    assert a2.calls == 0 and ctx2.attempts[0].status == "skipped"


def test_half_open_probe_success_closes_the_breaker(make_guards, clock) -> None:
    config = _config(openai_a=ModelConfig(breaker_failures=1, breaker_cooldown_s=10))
    guards = make_guards(config)
    ctx, _ = _ctx(clock)
    _chain(ctx, guards, ScriptedModel(A, [ServerError("x")]), ScriptedModel(B, [["b"]])).complete(REQ)
    assert guards.breaker.state(A).state == "open"
    clock.now += 10
    ctx, _ = _ctx(clock)
    ctx.hooks = hooks = CountingHooks()
    a = ScriptedModel(A, [["back"]])
    assert _chain(ctx, guards, a, ScriptedModel(B, [["b"]])).complete(REQ).text == "back"
    assert guards.breaker.state(A).state == "closed" and ("breaker", A, "closed") in hooks.events


def test_a_breaker_skip_on_the_only_model_fails_with_the_error_that_opened_it(make_guards, clock) -> None:
    guards = make_guards(_config(openai_a=ModelConfig(breaker_failures=2)))
    quota = InsufficientQuotaError(
        "You exceeded your current quota", provider="openai", model="a", status=429, code="insufficient_quota"
    )
    for _ in range(2):
        ctx, _ = _ctx(clock)
        with pytest.raises(InsufficientQuotaError):
            _chain(ctx, guards, ScriptedModel(A, [quota])).complete(REQ)
    ctx, _ = _ctx(clock)
    a = ScriptedModel(A, [["never"]])
    with pytest.raises(InsufficientQuotaError) as info:  # typed like the real thing, without a request
        _chain(ctx, guards, a).complete(REQ)
    assert a.calls == 0 and (info.value.status, info.value.code) == (429, "insufficient_quota")
    assert "circuit breaker open" in str(info.value) and "exceeded your current quota" in str(info.value)
    # with a model left to try, the chain moves on; if every model fails, the error names each
    ctx, _ = _ctx(clock)
    with pytest.raises(AllModelsFailedError) as failed:
        _chain(ctx, guards, ScriptedModel(B, [ServerError("down")]), ScriptedModel(A, [["never"]])).complete(REQ)
    assert "openai:b: server_error" in str(failed.value) and "circuit breaker open" in str(failed.value)


@pytest.mark.parametrize("stream", [False, True])
def test_a_breaker_opened_by_an_outage_requeues_a_job_with_no_other_model_until_the_cooldown(
    make_guards, clock, stream: bool
) -> None:
    """An open breaker is a wait, not a verdict on the job: what opened it (5xx, overload, cut
    streams) passes with time, so a job left with no other model is re-queued for the cooldown
    (no slot held, no request sent) and runs when the breaker lets a probe through."""
    guards = make_guards(_config(openai_a=ModelConfig(breaker_failures=2, breaker_cooldown_s=30)))

    def run(model: ScriptedModel, ctx: RunContext) -> str:
        chain = _chain(ctx, guards, model)
        return "".join(chain.stream(REQ)) if stream else chain.complete(REQ).text

    ctx, _ = _ctx(clock)
    ctx.hooks = hooks = CountingHooks()
    with pytest.raises(RetryLaterError) as held:  # two failures open it; the retry is not sent
        run(ScriptedModel(A, [ServerError("down")]), ctx)
    assert held.value.code == "breaker_open" and held.value.retry_after == pytest.approx(30.0, abs=0.1)
    assert [(x.status, x.error_type) for x in ctx.attempts] == [
        ("failed", "server_error"),
        ("failed", "server_error"),
        ("skipped", None),
    ]
    assert ("skip", A, "breaker_open") in hooks.events

    clock.now += 12  # a job of another worker meets the open breaker: held for what is left
    ctx, _ = _ctx(clock)
    a = ScriptedModel(A, [["never"]])
    with pytest.raises(RetryLaterError) as held:
        run(a, ctx)
    assert a.calls == 0 and held.value.retry_after == pytest.approx(18.0, abs=0.1)

    ctx, _ = _ctx(clock, deadline=clock.now + 10)  # the cooldown outlasts this job's deadline
    with pytest.raises(DeadlineExceededError):
        run(ScriptedModel(A, [["never"]]), ctx)

    clock.now += 18  # cooldown over: the re-queued job is the probe, and its success closes it
    ctx, _ = _ctx(clock)
    assert run(ScriptedModel(A, [["back"]]), ctx) == "back"
    assert guards.breaker.state(A).state == "closed"


def test_a_job_meeting_a_half_open_probe_in_flight_is_requeued_briefly(make_guards, clock) -> None:
    guards = make_guards(_config(openai_a=ModelConfig(breaker_failures=1, breaker_cooldown_s=10)))
    ctx, _ = _ctx(clock)
    with pytest.raises(RetryLaterError):
        _chain(ctx, guards, ScriptedModel(A, [ServerError("down")])).complete(REQ)
    clock.now += 10
    probe = guards.breaker.allow(A, guards.for_model(A).policy)  # another worker's call is the probe
    assert probe.kind == "probe"
    ctx, _ = _ctx(clock)
    with pytest.raises(RetryLaterError) as held:
        _chain(ctx, guards, ScriptedModel(A, [["never"]])).complete(REQ)
    assert held.value.code == "breaker_probe_busy" and 0 < (held.value.retry_after or 0) <= 5.0


def test_scattered_failures_on_a_busy_model_do_not_open_it(make_guards, clock) -> None:
    guards = make_guards(_config(openai_a=ModelConfig(breaker_failures=2)))
    for i in range(60):
        ctx, _ = _ctx(clock)
        outcome: Outcome = ServerError("blip") if i % 10 == 9 else ["ok"]
        model = ScriptedModel(A, [outcome, ["ok"]])
        assert _chain(ctx, guards, model).complete(REQ).text == "ok"  # 10% failures, retried
    assert guards.breaker.state(A).state == "closed"


def test_requests_that_say_nothing_about_the_model_do_not_trip_it(make_guards, clock) -> None:
    guards = make_guards(_config(openai_a=ModelConfig(breaker_failures=1)))
    ctx, _ = _ctx(clock)
    with pytest.raises(BadRequestError):
        _chain(ctx, guards, ScriptedModel(A, [BadRequestError("bad")])).complete(REQ)
    with pytest.raises(RetryLaterError):  # 429 with a long wait: not-before, not a breaker failure
        _chain(ctx, guards, ScriptedModel(A, [RateLimitedError("slow", retry_after=60.0)])).complete(REQ)
    assert guards.breaker.state(A).state == "closed"


@pytest.mark.parametrize("rpm", [None, 6000])
def test_a_429_makes_the_other_worker_wait_too(make_guards, clock, rpm: int | None) -> None:
    config = _config(openai_a=ModelConfig(rpm=rpm))
    worker1, worker2 = make_guards(config), make_guards(config, start=True)
    ctx2, slept2 = _ctx(clock)
    assert _chain(ctx2, worker2, ScriptedModel(A, [["warm"]])).complete(REQ).text == "warm"  # mirrored
    clock.now += 1.0

    ctx1, slept1 = _ctx(clock, advance=False)  # worker 1's sleep is its own; the clock stays
    a1 = ScriptedModel(A, [RateLimitedError("slow down", retry_after=3.0), ["ok"]])
    assert _chain(ctx1, worker1, a1).complete(REQ).text == "ok"
    # the retry slept the 429's wait (then, on this frozen clock, the guard waited it out once more)
    assert slept1[0] == 3.0 and a1.calls == 2

    # worker 2's mirror learns of the 429 by pub/sub, without reading Redis
    fetched = worker2.view(A, clock()).fetched
    until(lambda: worker2.view(A, clock()).not_before > clock(), "worker 2's mirror to learn of the 429", 30, 0.01)
    assert worker2.view(A, clock()).fetched == fetched
    clock.now += 1.0  # worker 2 starts a job 1 s after the 429: it waits the other 2 s
    ctx2, slept2 = _ctx(clock)
    ctx2.hooks = hooks = CountingHooks()
    a2 = ScriptedModel(A, [["later"]])
    assert _chain(ctx2, worker2, a2).complete(REQ).text == "later"
    assert a2.calls == 1 and len(slept2) == 1
    # without a bucket: up to 10% jitter; with one (burst 10 at 6000 RPM): exactly the not-before time
    assert 2.0 <= slept2[0] <= 2.0 + (0.2 if rpm is None else 0.0)
    assert hooks.events[0] == ("wait", A, "not_before")


def test_a_model_held_by_a_long_shared_wait_is_passed_to_the_next_model(make_guards, clock) -> None:
    guards = make_guards(_config())
    guards.limiter.hold_off(A, 30.0)
    ctx, slept = _ctx(clock, max_inworker_wait_s=10.0)
    ctx.hooks = hooks = CountingHooks()
    a, b = ScriptedModel(A, [["never"]]), ScriptedModel(B, [["served"]])
    stream = _chain(ctx, guards, a, b).stream(REQ)
    assert "".join(stream) == "served" and stream.model_id == B
    assert a.calls == 0 and b.calls == 1 and slept == []
    assert [(x.model, x.status, x.error_type) for x in ctx.attempts] == [
        (A, "failed", "retry_later"),
        (B, "succeeded", None),
    ]
    assert ("requeue", A, "not_before") in hooks.events  # the hook still says A was held


@pytest.mark.parametrize("stream", [True, False])
@pytest.mark.parametrize("precheck", [True, False])
def test_every_model_held_requeues_for_the_shortest_wait(make_guards, clock, stream: bool, precheck: bool) -> None:
    guards = make_guards(_config())
    guards.limiter.hold_off(A, 30.0)
    guards.limiter.hold_off(B, 20.0)
    ctx, slept = _ctx(clock, max_inworker_wait_s=10.0)
    a, b = ScriptedModel(A, [["never"]]), ScriptedModel(B, [["never"]])
    chain = _chain(ctx, guards, a, b, held=guards if precheck else None)
    with pytest.raises(RetryLaterError) as info:
        if stream:
            list(chain.stream(REQ))
        else:
            chain.complete(REQ)
    assert a.calls == 0 and b.calls == 0 and slept == []
    assert 20.0 <= info.value.retry_after <= 21.0 and info.value.code == "not_before"
    assert [(x.model, x.error_type) for x in ctx.attempts] == [(A, "retry_later"), (B, "retry_later")]
    assert [x.status for x in ctx.attempts] == (["skipped", "skipped"] if precheck else ["failed", "failed"])


def test_a_429_with_a_long_wait_falls_back_at_once_and_holds_the_model_for_everyone(make_guards, clock) -> None:
    config = _config()
    worker1, worker2 = make_guards(config), make_guards(config)
    ctx, slept = _ctx(clock, max_inworker_wait_s=10.0)
    a = ScriptedModel(A, [RateLimitedError("slow down", retry_after=30.0), ["never"]])
    b = ScriptedModel(B, [["from b"]])
    assert _chain(ctx, worker1, a, b, held=worker1).complete(REQ).text == "from b"
    assert (a.calls, b.calls) == (1, 1) and slept == []  # no in-worker wait, no re-queue
    assert [(x.model, x.error_type, x.wait_s) for x in ctx.attempts] == [
        (A, "rate_limited", 30.0),
        (B, None, 0.0),
    ]
    # the 429's wait is A's shared not-before time: the next job (another worker) skips A untried
    ctx2, slept2 = _ctx(clock, max_inworker_wait_s=10.0)
    a2, b2 = ScriptedModel(A, [["never"]]), ScriptedModel(B, [["b again"]])
    assert _chain(ctx2, worker2, a2, b2, held=worker2).complete(REQ).text == "b again"
    assert (a2.calls, b2.calls) == (0, 1) and slept2 == []
    assert (ctx2.attempts[0].model, ctx2.attempts[0].status, ctx2.attempts[0].error_type) == (
        A,
        "skipped",
        "retry_later",
    )
    assert 29.0 <= (ctx2.attempts[0].wait_s or 0) <= 30.0


def test_a_hold_past_the_deadline_falls_back_and_fails_deadline_only_when_all_are(make_guards, clock) -> None:
    guards = make_guards(_config())
    guards.limiter.hold_off(A, 30.0)
    ctx, _ = _ctx(clock, deadline=clock() + 5.0)
    b = ScriptedModel(B, [["in time"]])
    assert _chain(ctx, guards, ScriptedModel(A, [["never"]]), b).complete(REQ).text == "in time"
    guards.limiter.hold_off(B, 30.0)
    ctx, _ = _ctx(clock, deadline=clock() + 5.0)
    with pytest.raises(DeadlineExceededError):
        _chain(ctx, guards, ScriptedModel(A, [["never"]]), ScriptedModel(B, [["never"]])).complete(REQ)


def test_the_deadline_stops_a_shared_wait(make_guards, clock) -> None:
    guards = make_guards(_config())
    guards.limiter.hold_off(A, 5.0)
    ctx, slept = _ctx(clock, deadline=clock() + 3.0)
    with pytest.raises(DeadlineExceededError):
        _chain(ctx, guards, ScriptedModel(A, [["never"]])).complete(REQ)
    assert slept == []


def test_rpm_waits_inside_the_worker_and_tpm_skips_what_never_fits(make_guards, clock) -> None:
    guards = make_guards(_config(openai_a=ModelConfig(rpm=60, tpm=1000)))
    ctx, slept = _ctx(clock)
    a = ScriptedModel(A, [["x"]])
    chain = _chain(ctx, guards, a)
    chain.complete(REQ)
    chain.complete(REQ)
    assert slept == [1.0] and a.calls == 2  # 60 RPM: the second request waited its slot
    big = ChatRequest(messages=[], params=RequestParams(max_tokens=500), prompt_tokens=501)
    ctx, _ = _ctx(clock)
    b = ScriptedModel(B, [["fits elsewhere"]])
    assert _chain(ctx, guards, ScriptedModel(A, [["never"]]), b).complete(big).text == "fits elsewhere"
    assert ctx.attempts[0].status == "skipped" and "TPM" in (ctx.attempts[0].message or "")


def test_slow_first_token_closes_the_stream_and_falls_back_without_retrying(clock) -> None:
    ctx, _ = _ctx(clock)
    slow = ListStream(["late"], delay=30.0)
    a, b = ScriptedModel(A, [lambda: slow]), ScriptedModel(B, [["fast"]])
    started = time.monotonic()
    stream = _chain(ctx, None, a, b, ttft=0.2).stream(REQ)
    assert "".join(stream) == "fast" and stream.model_id == B
    assert time.monotonic() - started < 5 and slow.closed
    assert a.calls == 1  # FirstTokenTimeoutError is not retried
    assert [(x.model, x.error_type) for x in ctx.attempts] == [(A, "first_token_timeout"), (B, None)]


def test_ttft_limit_applies_to_complete_and_not_after_the_first_token(clock) -> None:
    ctx, _ = _ctx(clock)
    a = ScriptedModel(A, [lambda: ListStream(["late"], delay=30.0)])
    with pytest.raises(FirstTokenTimeoutError):
        _chain(ctx, None, a, ttft=0.1).complete(REQ)
    ctx, _ = _ctx(clock)
    a = ScriptedModel(A, [lambda: ListStream(["quick", " answer"])])
    assert _chain(ctx, None, a, ttft=0.1).complete(REQ).text == "quick answer"


def test_ttft_does_not_mistake_a_consumer_cancel_for_slowness(clock) -> None:
    ctx, _ = _ctx(clock)
    slow = ListStream(["late"], delay=30.0)
    stream = _chain(ctx, None, ScriptedModel(A, [lambda: slow]), ttft=20.0).stream(REQ)
    threading.Timer(0.1, stream.close).start()
    with pytest.raises(JobCancelledError):
        list(stream)


def test_watchdog_cancel_races() -> None:
    dog = Watchdog()
    fired: list[int] = []
    try:
        early = dog.schedule(0.05, lambda: fired.append(1))
        late = dog.schedule(5.0, lambda: fired.append(2))
        until(lambda: fired == [1], "the early deadline to fire", 30)
        assert not dog.cancel(early)  # ran: the caller must treat it as expired
        assert dog.cancel(late) and dog.cancel(late)
    finally:
        dog.stop()
    assert fired == [1]


class _NullProvider(Provider):
    name = "openai"

    def complete(self, model: str, request: ChatRequest) -> Completion:  # pragma: no cover - never called
        raise NotImplementedError

    def stream(self, model: str, request: ChatRequest) -> ChatStream:  # pragma: no cover
        raise NotImplementedError


def test_build_chain_puts_the_guard_inside_the_meter_inside_the_retry(make_guards, clock) -> None:
    registry = ProviderRegistry({"openai": _NullProvider()})
    config = _config(openai_b=ModelConfig(ttft_limit_s=5))
    ctx = RunContext()
    guards = make_guards(config)
    metered: list[ChatModel] = []

    def meter(model: ChatModel) -> ChatModel:
        metered.append(model)
        return model

    chain = build_chain([A, B], registry, config, ctx, meter=meter, guards=guards)
    assert isinstance(chain, FallbackModel)
    for retry in chain.models:
        assert isinstance(retry, RetryingModel) and isinstance(retry.wrapped, GuardedModel)
        # innermost: the per-attempt span around the provider (workers/llm/instrumented.py)
        assert isinstance(retry.wrapped.wrapped, InstrumentedModel)
        assert isinstance(retry.wrapped.wrapped.wrapped, ProviderModel)
    assert metered == [r.wrapped for r in chain.models]
    assert [r.wrapped.ttft_limit_s for r in chain.models] == [None, 5]
    # without shared guards only a model with a TTFT limit is wrapped
    bare = build_chain([A, B], registry, config, ctx)
    assert [type(r.wrapped).__name__ for r in bare.models] == ["InstrumentedModel", "GuardedModel"]

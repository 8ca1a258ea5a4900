"""The money wrapper: pre-count, context-window gate and budget reservation around every call.

``Fallback( Retry( Metered( [guards]( Provider model ))))``: each attempt of each model
1. plans the call once per model (price, pre-count, window gate or sliding-window trim),
2. reserves the worst case (prompt tokens x input price + max_tokens x output price) in every
   budget scope at once (one Lua script), before any HTTP request,
3. settles the actual cost afterwards, idempotently per job id and call number: with the
   provider's usage, or with our estimate (``usage.estimated``) when a stream omitted it, when the
   consumer cancelled, or when it failed after the first delta; a call that failed before any
   output releases its reservation.

A model that cannot hold the prompt, or whose worst case does not fit the budget even with no
reservation in flight, is skipped before dispatch (the fallback chain moves on; with no model left
the job fails with that typed, non-retryable error). A worst case that fits once the reservations
in flight settle is a hold (:class:`BudgetBusyError`): the next model is tried, and when none can
be served the job is re-queued with a short jittered countdown (``budget_wait_s``), holding no
worker slot. The kill switch and an unreachable ledger stop the job at once.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from decimal import Decimal

from workers.accounting.ledger import Ledger, LedgerUnavailableError, Reservation
from workers.accounting.metrics import UsageMetrics
from workers.accounting.preflight import CallPlan, plan_call
from workers.accounting.prices import PriceBook
from workers.accounting.tokens import TokenCounter
from workers.connections.oom import refused_for_memory
from workers.contract import CompletionJob, ToolCall, Usage
from workers.contract.messages import cache_breakpoints
from workers.llm.base import ChatRequest, ChatStream, Completion
from workers.llm.errors import (
    BudgetBusyError,
    BudgetExceededError,
    ContextLengthExceededError,
    LLMQError,
    PreparationError,
    must_propagate,
)
from workers.llm.fallback import SkipModel
from workers.llm.model import ChatModel, RunContext, WrappedStream

__all__ = ["BUDGET_WAIT_BASE_S", "BUDGET_WAIT_MAX_S", "Meter", "MeteredModel"]

#: First countdown when the budget is busy with in-flight reservations; doubles per wait, capped.
BUDGET_WAIT_BASE_S = 0.25
BUDGET_WAIT_MAX_S = 5.0


@dataclass
class Meter:
    """Per-job accounting shared by the metered models of one chain."""

    job: CompletionJob
    counter: TokenCounter
    prices: PriceBook
    ledger: Ledger | None
    ctx: RunContext
    metrics: UsageMetrics | None = None
    #: Total settled cost of the job's calls; None while every call was unpriced.
    cost_usd: Decimal | None = None
    #: Messages the sliding window dropped for the model that answered.
    dropped: int = 0
    #: Usage of the last settled call (the answer's, or the partial output of a cut/cancel).
    last_usage: Usage | None = None
    #: What the job pays of the price table's price: a provider batch's or OpenAI flex's discount.
    price_factor: Decimal = Decimal(1)
    #: Called when Redis refuses a reservation at ``maxmemory``, with whether this run already paid
    #: a call: True to reserve again (Redis takes writes), False to raise the refusal (no call is
    #: started that could not be accounted for). None: raised at once.
    wait_for_writes: Callable[[bool], bool] | None = None
    _plans: dict[str, CallPlan] = field(default_factory=dict)

    def plan(self, model_id: str, request: ChatRequest) -> CallPlan:
        plan = self._plans.get(model_id)
        if plan is None:
            try:
                plan = plan_call(
                    model_id,
                    request.messages,
                    counter=self.counter,
                    prices=self.prices,
                    max_tokens=request.params.max_tokens,
                    answers=request.params.answers,
                    tools=request.tools,
                    truncate=self.job.truncate,
                    # a request that marks cache breakpoints may pay the write premium on its prompt
                    cache_writes=request.params.prompt_cache is not None
                    or bool(cache_breakpoints(request.tools, request.messages)),
                )
            except ContextLengthExceededError as exc:
                raise SkipModel(exc.message, exc) from exc
            except LLMQError:
                raise
            except BaseException as exc:  # a tokenizer panic, a pricing bug: typed, terminal
                if must_propagate(exc):
                    raise
                provider, _, native = model_id.partition(":")
                raise PreparationError(
                    f"could not pre-count or price the request for {model_id}: {type(exc).__name__}: {exc}"[:1000],
                    provider=provider,
                    model=native,
                ) from exc
            self._plans[model_id] = plan
        return plan

    def priced(self, amount: Decimal | None) -> Decimal | None:
        """``amount`` at the job's price (:attr:`price_factor` of the table's)."""
        if amount is None or self.price_factor == 1:
            return amount
        return amount * self.price_factor

    def new_turn(self) -> None:
        """The next call sends different messages (a repair or tool turn): plan every model again."""
        self._plans.clear()

    def reserve(self, plan: CallPlan) -> Reservation | None:
        if self.ledger is None:
            return None
        while True:
            self.ctx.calls += 1
            try:
                reservation = self.ledger.reserve(
                    self.job.id,
                    self.ctx.calls,
                    self.job.tenant,
                    self.priced(plan.worst_case_usd) or 0,
                    tags=self.job.tags,
                    user=self.job.user,
                    model=plan.model,
                )
            except LedgerUnavailableError as exc:
                self.ctx.calls -= 1  # nothing was reserved under this number
                if self.wait_for_writes is not None and refused_for_memory(exc):
                    if self.wait_for_writes(self.cost_usd is not None):
                        continue  # Redis takes writes again
                raise
            except BudgetBusyError as exc:
                self.ctx.calls -= 1  # nothing was reserved under this number
                raise BudgetBusyError(
                    exc.message,
                    code=exc.code,
                    retry_after=self.budget_wait_s(),
                    should_retry=False,  # not slept in the worker: the chain moves on, else a re-queue
                    details=exc.details,
                ) from exc
            except BudgetExceededError as exc:
                if exc.code == "budget_limit":
                    raise SkipModel(exc.message, exc) from exc
                raise
            if not reservation.already_settled:
                break
            # this call number was settled by an earlier run of a redelivered job: a new call is
            # a new charge, under the next number
        if self.metrics is not None:
            self.metrics.record_scopes(reservation.scopes)
        return reservation

    def budget_wait_s(self) -> float:
        """Countdown before trying again when the budget is busy with reservations in flight:
        jittered, doubling with each earlier wait of this job (its attempts survive re-queues)."""
        waits = sum(1 for a in self.ctx.attempts if a.error_type == BudgetBusyError.type_name)
        backoff: float = min(BUDGET_WAIT_MAX_S, BUDGET_WAIT_BASE_S * 2**waits)
        return round(backoff * random.uniform(0.5, 1.0), 3)

    def release(self, reservation: Reservation | None) -> None:
        if reservation is not None and self.ledger is not None:
            self.ledger.release(reservation)

    def settle(self, reservation: Reservation | None, plan: CallPlan, usage: Usage) -> Decimal | None:
        self.last_usage = usage
        cost = self.priced(plan.cost(usage))
        if cost is not None:
            self.cost_usd = (self.cost_usd or Decimal(0)) + cost
        if reservation is not None and self.ledger is not None:
            if self.ctx.fenced:
                # the job moved to another run, which charges the calls it makes; this run's
                # late settle would charge a job it no longer owns (the lost run's call is
                # the price of at-least-once delivery, paid by the provider account, not the ledger)
                self.ledger.release(reservation)
                return cost
            settlement = self.ledger.settle(reservation, cost or 0)
            if self.metrics is not None:
                self.metrics.record_scopes(settlement.scopes)
        if self.metrics is not None:
            self.metrics.record_usage(plan.model, usage, cost)
        return cost

    def usage(
        self, plan: CallPlan, reported: Usage | None, text: str, tool_calls: Sequence[ToolCall], thinking: str = ""
    ) -> Usage:
        usage = plan.usage(reported, text, tool_calls, self.counter)
        if thinking and not usage.reasoning_tokens:
            # Anthropic and Ollama bill thinking as output without a separate count: estimate it
            thought = self.counter.count_text(plan.model, thinking).tokens
            if reported is None:
                usage.completion_tokens += thought
            usage.reasoning_tokens = min(thought, usage.completion_tokens)
        return usage


def _all_text(text: str, answer: Completion | ChatStream) -> str:
    """The output a usage estimate counts: the answer and, with ``n`` > 1, the other answers."""
    if not answer.alternatives:
        return text
    return text + "".join(alt.content for alt in answer.alternatives)


class MeteredModel(ChatModel):
    def __init__(self, wrapped: ChatModel, meter: Meter) -> None:
        self.wrapped = wrapped
        self.model_id = wrapped.model_id
        self.meter = meter

    def _prepared(self, plan: CallPlan, request: ChatRequest) -> ChatRequest:
        return dataclasses.replace(request, messages=plan.messages, prompt_tokens=plan.prompt.tokens)

    def complete(self, request: ChatRequest) -> Completion:
        meter = self.meter
        plan = meter.plan(self.model_id, request)
        reservation = meter.reserve(plan)
        try:
            completion = self.wrapped.complete(self._prepared(plan, request))
        except BaseException:
            meter.release(reservation)
            raise
        completion.usage = meter.usage(
            plan, completion.usage, _all_text(completion.text, completion), completion.tool_calls, completion.thinking
        )
        meter.settle(reservation, plan, completion.usage)
        meter.dropped = plan.dropped
        return completion

    def stream(self, request: ChatRequest) -> ChatStream:
        return _MeteredStream(self, request)


class _MeteredStream(WrappedStream["MeteredModel"]):
    def __iter__(self) -> Iterator[str]:
        meter = self._owner.meter
        plan = meter.plan(self._owner.model_id, self._request)
        reservation = meter.reserve(plan)
        parts: list[str] = []
        settled = False
        try:
            inner = self._owner.wrapped.stream(self._owner._prepared(plan, self._request))
            self.adopt(inner)
            for text in inner:
                parts.append(text)
                yield text
            self.finish_from_inner()
            text = _all_text("".join(parts), inner)
            self.usage = meter.usage(plan, inner.usage, text, inner.tool_calls, inner.thinking)
            meter.settle(reservation, plan, self.usage)
            meter.dropped = plan.dropped
            settled = True
        finally:
            if not settled:
                if parts:
                    # output was produced (cut, mid-stream error, cancel): the provider bills it
                    partial = meter.usage(plan, None, "".join(parts), [])
                    self.usage = partial
                    meter.settle(reservation, plan, partial)
                else:
                    meter.release(reservation)

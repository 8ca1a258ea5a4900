"""The retry wrapper: the one and only retry loop for an upstream call.

Decisions follow the official OpenAI and Anthropic SDKs: only retryable types (or an
explicit ``x-should-retry: true``) are retried; the wait is the provider's own (``retry-after-ms``,
``retry-after``) when it is positive and under ``max_retry_after_s``, else full-jitter exponential
backoff. A wait longer than the worker may hold a slot for raises :class:`RetryLaterError` (longer
than the job's deadline allows: :class:`DeadlineExceededError` with that wait): the model is held,
the fallback chain moves on to the next model, and only when none can serve is the job re-queued
with a countdown (``workers/llm/fallback.py``). Streams are retried only until their first text
delta has been handed out; after that an error propagates unchanged.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

from workers.contract import Attempt, redact
from workers.llm.base import ChatRequest, ChatStream, Completion
from workers.llm.errors import DeadlineExceededError, LLMQError, RetryLaterError, error_type_name
from workers.llm.model import ChatModel, RunContext, WrappedStream

__all__ = ["RetryPolicy", "RetryingModel", "retry_delay"]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_retries: int = 3
    initial_backoff_s: float = 0.5
    max_backoff_s: float = 8.0
    #: Provider-requested waits above this are not trusted; backoff is used instead.
    max_retry_after_s: float = 120.0


def retry_delay(exc: LLMQError, retry_index: int, policy: RetryPolicy, rng: random.Random | None = None) -> float:
    """Seconds to wait before retry number ``retry_index`` (0-based) after ``exc``."""
    hinted = exc.retry_after
    if hinted is not None and 0 < hinted <= policy.max_retry_after_s:
        return hinted
    cap = min(policy.initial_backoff_s * (2**retry_index), policy.max_backoff_s)
    return (rng or random).uniform(0, cap)


def _record(ctx: RunContext, model_id: str, exc: LLMQError | None, wait: float) -> None:
    if exc is None:
        ctx.attempts.append(Attempt(model=model_id, status="succeeded"))
        return
    ctx.attempts.append(
        Attempt(
            model=model_id,
            status="failed",
            error_type=error_type_name(exc),
            http_status=exc.status,
            wait_s=round(wait, 3),
            message=redact(exc.message)[:300] if exc.message else None,
        )
    )


class RetryingModel(ChatModel):
    def __init__(
        self, wrapped: ChatModel, policy: RetryPolicy, ctx: RunContext, rng: random.Random | None = None
    ) -> None:
        self.wrapped = wrapped
        self.model_id = wrapped.model_id
        self.policy = policy
        self.ctx = ctx
        self._rng = rng

    def _wait_or_raise(self, exc: LLMQError, retry_index: int) -> None:
        """Sleep before the next attempt, or re-raise when no retry is allowed."""
        if not exc.is_retryable or retry_index >= self.policy.max_retries:
            _record(self.ctx, self.model_id, exc, 0.0)
            raise exc
        delay = retry_delay(exc, retry_index, self.policy, self._rng)
        remaining = self.ctx.remaining()
        if remaining is not None and delay >= remaining:
            _record(self.ctx, self.model_id, exc, 0.0)
            raise DeadlineExceededError(
                f"the job's deadline leaves {max(remaining, 0):.1f}s, the next attempt needs a {delay:.1f}s wait",
                provider=exc.provider,
                model=exc.model,
                retry_after=delay,  # a hold: the fallback chain tries the next model
            ) from exc
        _record(self.ctx, self.model_id, exc, delay)
        self.ctx.hooks.on_retry(self.model_id, error_type_name(exc), retry_index + 1, delay)
        if delay > self.ctx.max_inworker_wait_s:
            raise RetryLaterError(
                f"upstream asked to wait {delay:.1f}s, longer than a worker slot may be held",
                provider=exc.provider,
                model=exc.model,
                status=exc.status,
                code=exc.code,
                retry_after=delay,
            ) from exc
        if delay > 0:
            self.ctx.sleep(delay)

    def complete(self, request: ChatRequest) -> Completion:
        retry_index = 0
        while True:
            try:
                completion = self.wrapped.complete(request)
            except LLMQError as exc:
                self._wait_or_raise(exc, retry_index)
                retry_index += 1
                continue
            _record(self.ctx, self.model_id, None, 0.0)
            return completion

    def stream(self, request: ChatRequest) -> ChatStream:
        return _RetryingStream(self, request)


class _RetryingStream(WrappedStream["RetryingModel"]):
    def __iter__(self) -> Iterator[str]:
        owner = self._owner
        retry_index = 0
        while True:
            inner: ChatStream | None = None
            try:
                inner = owner.wrapped.stream(self._request)
                self.adopt(inner)
                iterator = iter(inner)
                first = next(iterator, None)
            except LLMQError as exc:
                if inner is not None:
                    inner.close()
                owner._wait_or_raise(exc, retry_index)
                retry_index += 1
                continue
            break
        if first is not None:
            yield first
            try:
                yield from iterator
            except LLMQError as exc:
                _record(owner.ctx, owner.model_id, exc, 0.0)
                raise
        _record(owner.ctx, owner.model_id, None, 0.0)
        self.finish_from_inner()

"""The guard wrapper: shared limits and the circuit breaker before each attempt, TTFT during it.

Placed inside the retry loop, ``Fallback( Retry( [Metered]( Guarded( Provider ))))``, so every
attempt passes it. Before the request it asks its :class:`Guard` (``workers/guards/shared.py``: Redis
state shared by all workers) for an :class:`Admission`:

* the breaker is open, or its half-open probe is taken by another call: :class:`SkipModel`, and
  the fallback chain moves on without a request;
* the request needs more tokens than the model's TPM bucket holds: :class:`SkipModel` too;
* a wait (the model's shared not-before time after a 429, or the RPM/TPM buckets) up to the
  worker's in-slot cap is slept here, cancel-aware (``ctx.sleep``); a longer one raises
  :class:`RetryLaterError` (the model is held: the fallback chain tries the next model, and the job
  is re-queued with the shortest such wait only when no model can serve), or
  :class:`DeadlineExceededError` (carrying the wait) when the job's deadline comes first. The
  ``RetryLaterError`` is marked ``should_retry=False`` so the retry loop records it and passes it up instead of retrying.

After the request it reports the outcome (breaker counts, a 429's wait as the shared not-before
time). The time-to-first-token limit is enforced on streams here too: when no first delta came
within ``ttft_limit_s``, the response is closed and :class:`FirstTokenTimeoutError` (not retried,
falls back) is raised. With a TTFT limit, :meth:`GuardedModel.complete` reads a stream as well, so
non-streaming jobs get the same limit. The limit covers reading the body; a provider that delays
even its response headers is bounded by the HTTP read timeout instead.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

from workers.contract import Message, split_model_id
from workers.llm.base import ChatRequest, ChatStream, Completion
from workers.llm.errors import (
    DeadlineExceededError,
    FirstTokenTimeoutError,
    JobCancelledError,
    LLMQError,
    RetryLaterError,
    error_type_name,
)
from workers.llm.fallback import SkipModel
from workers.llm.model import ChatModel, RunContext, WrappedStream
from workers.llm.watchdog import Deadline, Watchdog, shared_watchdog

__all__ = ["Admission", "Guard", "GuardSkip", "GuardedModel", "request_tokens"]


class GuardSkip(SkipModel):
    """A guard passes the model over; ``kind`` is a short label for metrics, ``error`` what the job
    fails with if no model is left (for an open breaker: the error that opened it), ``retry_after``
    the wait after which the model may serve again (a breaker opened by an outage: the job is
    re-queued for it instead)."""

    def __init__(
        self, kind: str, reason: str, error: LLMQError | None = None, *, retry_after: float | None = None
    ) -> None:
        super().__init__(reason, error, retry_after)
        self.kind = kind


@dataclass(slots=True)
class Admission:
    """A guard's answer for one attempt."""

    #: Seconds to wait before sending; when refused, the wait that would have been needed.
    wait_s: float = 0.0
    #: What the wait is for: ``not_before`` or ``rate_limit``.
    reason: str = ""
    #: The wait is longer than allowed: nothing was reserved, do not send.
    refused: bool = False
    #: This call is the breaker's half-open probe; its outcome closes or re-opens the breaker.
    probe: bool = False
    #: Opaque guard state for :meth:`Guard.settle` (the probe's lease).
    token: object = None


ADMIT_NOW = Admission()


class Guard(Protocol):
    """Shared per-model state consulted around each attempt."""

    def admit(self, tokens: int, max_wait_s: float) -> Admission:
        """Decide on one attempt of ``tokens`` (prompt + max_tokens); raise GuardSkip to pass."""
        ...

    def settle(self, admission: Admission, error: LLMQError | None, *, verdict: bool = True) -> str | None:
        """Report the attempt's outcome; ``verdict=False`` when it says nothing about the model
        (cancelled). Returns the breaker state this moved it to (``open``/``closed``), if any."""
        ...


def request_tokens(request: ChatRequest) -> int:
    """TPM cost of a request: its pre-counted prompt plus ``max_tokens`` for each answer (``n``).

    Without a pre-count (unit tests, or a chain without the metering wrapper) the prompt is
    estimated at 4 characters per token plus 4 per message, which is what it is: an estimate.
    """
    prompt = request.prompt_tokens
    if prompt is None:
        prompt = _estimate(request.messages)
    return prompt + request.params.max_tokens * request.params.answers


def _estimate(messages: list[Message]) -> int:
    chars = 0
    for m in messages:
        chars += len(m.text)
        for call in m.tool_calls or ():
            chars += len(call.function.name) + len(call.function.arguments)
    return chars // 4 + 4 * len(messages)


class GuardedModel(ChatModel):
    def __init__(
        self,
        wrapped: ChatModel,
        ctx: RunContext,
        *,
        guard: Guard | None = None,
        ttft_limit_s: float | None = None,
        watchdog: Watchdog | None = None,
    ) -> None:
        self.wrapped = wrapped
        self.model_id = wrapped.model_id
        self.ctx = ctx
        self.guard = guard
        self.ttft_limit_s = ttft_limit_s or None
        self.watchdog = watchdog or (shared_watchdog() if self.ttft_limit_s else None)

    # --- before and after each attempt -------------------------------------------------------------

    def _admit(self, request: ChatRequest) -> Admission:
        guard = self.guard
        if guard is None:
            return ADMIT_NOW
        ctx = self.ctx
        hooks = ctx.hooks
        remaining = ctx.remaining()
        max_wait = ctx.max_inworker_wait_s if remaining is None else max(0.0, min(ctx.max_inworker_wait_s, remaining))
        # a skip (SkipModel) is reported to the hooks by the fallback wrapper, with its kind
        admission = guard.admit(request_tokens(request), max_wait)
        if admission.refused:
            raise self._too_long(admission, remaining)
        if admission.wait_s > 0:
            hooks.on_wait(self.model_id, admission.reason, admission.wait_s)
            try:
                ctx.sleep(admission.wait_s)
            except BaseException:
                guard.settle(admission, None, verdict=False)
                raise
        return admission

    def _too_long(self, admission: Admission, remaining: float | None) -> LLMQError:
        provider, model = split_model_id(self.model_id)
        wait = admission.wait_s
        if remaining is not None and wait >= remaining:
            return DeadlineExceededError(
                f"{self.model_id}: the shared {admission.reason} wait of {wait:.1f}s is past the job's deadline",
                provider=provider,
                model=model,
                retry_after=wait,  # a hold: the fallback chain tries the next model
            )
        self.ctx.hooks.on_requeue(self.model_id, admission.reason, wait)
        return RetryLaterError(
            f"not sent: {self.model_id} is held by the shared {admission.reason} for {wait:.1f}s",
            provider=provider,
            model=model,
            code=admission.reason,
            retry_after=wait,
            should_retry=False,  # the retry loop passes it up, the fallback chain moves on
        )

    def _settle(self, admission: Admission, error: LLMQError | None, verdict: bool = True) -> None:
        if verdict:
            self.ctx.hooks.on_attempt(self.model_id, None if error is None else error_type_name(error))
        if self.guard is None:
            return
        moved = self.guard.settle(admission, error, verdict=verdict)
        if moved:
            self.ctx.hooks.on_breaker(self.model_id, moved)

    # --- calls ------------------------------------------------------------------------------------

    def complete(self, request: ChatRequest) -> Completion:
        if self.ttft_limit_s:
            stream = self.stream(request)
            abort = request.abort
            try:
                if abort is not None and not abort.arm(stream.close):
                    provider, model = split_model_id(self.model_id)
                    raise JobCancelledError("cancelled before the request was sent", provider=provider, model=model)
                for _ in stream:
                    pass
            finally:
                if abort is not None:
                    abort.disarm()
                stream.close()
            return stream.to_completion()
        admission = self._admit(request)
        try:
            completion = self.wrapped.complete(request)
        except LLMQError as exc:
            self._settle(admission, exc, verdict=not isinstance(exc, JobCancelledError))
            raise
        except BaseException:
            self._settle(admission, None, verdict=False)
            raise
        self._settle(admission, None)
        return completion

    def stream(self, request: ChatRequest) -> ChatStream:
        return _GuardedStream(self, request)

    def _first_token_timeout(self) -> FirstTokenTimeoutError:
        provider, model = split_model_id(self.model_id)
        return FirstTokenTimeoutError(
            f"no first token within {self.ttft_limit_s:g}s (time-to-first-token limit); response closed",
            provider=provider,
            model=model,
        )


class _GuardedStream(WrappedStream["GuardedModel"]):
    def __init__(self, owner: GuardedModel, request: ChatRequest) -> None:
        super().__init__(owner, request)
        self._expired = False

    def _expire(self) -> None:
        """Watchdog callback: no first token in time. Closing the response wakes the read."""
        self._expired = True
        if self.inner is not None:
            self.inner.close()

    def _open(self) -> tuple[str | None, Iterator[str]]:
        """Open the upstream stream and read its first delta, within the TTFT limit if any."""
        owner = self._owner
        watchdog = owner.watchdog
        if watchdog is None or owner.ttft_limit_s is None:
            inner = owner.wrapped.stream(self._request)
            self.adopt(inner)
            iterator = iter(inner)
            return next(iterator, None), iterator
        timer: Deadline = watchdog.schedule(owner.ttft_limit_s, self._expire)
        try:
            inner = owner.wrapped.stream(self._request)
            self.adopt(inner)
            if self._expired:
                raise owner._first_token_timeout()
            iterator = iter(inner)
            first = next(iterator, None)
        except JobCancelledError:
            watchdog.cancel(timer)
            if self._expired:  # the read failed because our timer closed the response
                raise owner._first_token_timeout() from None
            raise
        except BaseException:
            watchdog.cancel(timer)
            raise
        if not watchdog.cancel(timer):  # lost the race: the response is being closed
            self.close()
            raise owner._first_token_timeout()
        return first, iterator

    def __iter__(self) -> Iterator[str]:
        owner = self._owner
        admission = owner._admit(self._request)
        error: LLMQError | None = None
        done = False
        try:
            first, iterator = self._open()
            if first is not None:
                yield first
                yield from iterator
            done = True
        except LLMQError as exc:
            error = exc
            if self.inner is not None:
                self.inner.close()
            raise
        finally:
            if error is not None:
                owner._settle(admission, error, verdict=not isinstance(error, JobCancelledError))
            else:
                owner._settle(admission, None, verdict=done)
        self.finish_from_inner()

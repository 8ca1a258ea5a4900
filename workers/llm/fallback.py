"""The fallback wrapper: try each model of the chain in order, before the first delta only.

A model is left for the next one on errors whose type says so (``falls_back``: exhausted
retryable errors, overload, model not found, insufficient quota, context overflow) and when a
pre-dispatch check skips it (context window, open breaker, budget). Errors that would fail on any
model (bad request, authentication, budget) end the chain at once. Once a stream has handed out
its first delta, failures propagate unchanged: text is never duplicated by a second model. When
every model fails, :class:`AllModelsFailedError` names each attempt.

A model that is **held** -- it asked for a wait longer than a worker slot may be held (a 429 with
a long ``retry-after``, the shared not-before time such a 429 left, RPM/TPM buckets, budget
reservations in flight: :class:`RetryLaterError`), or longer than the job's deadline allows
(:class:`DeadlineExceededError` carrying that wait) -- is passed over for the next model that is
not. ``held`` (optional) answers "is this model held, for how long?" from shared state before any
work is done for it, so a held model costs no reservation. Only when no model of the chain could
serve and at least one was merely held does the chain raise the shortest hold: the job is
re-queued for that wait (or, when every hold is past the deadline, fails ``deadline_exceeded``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

from workers.contract import Attempt
from workers.llm.base import ChatRequest, ChatStream, Completion
from workers.llm.errors import (
    AllModelsFailedError,
    BudgetExceededError,
    ContextLengthExceededError,
    DeadlineExceededError,
    LLMQError,
    RetryLaterError,
    error_type_name,
)
from workers.llm.model import ChatModel, RunContext, WrappedStream

__all__ = ["FallbackModel", "HoldCheck", "SkipModel", "is_hold", "skip_kind"]

#: Returns a reason to skip a model before dispatch (e.g. "context window 8192 < 9000"), or None.
SkipCheck = Callable[[ChatModel], str | None]
#: Seconds a model is held for (a shared not-before time), or None; read before dispatch.
HoldCheck = Callable[[ChatModel], float | None]


def is_hold(exc: LLMQError) -> bool:
    """``exc`` says "this model cannot be called now, try later", not "this model failed"."""
    return isinstance(exc, RetryLaterError) or (isinstance(exc, DeadlineExceededError) and exc.retry_after is not None)


class SkipModel(Exception):
    """Raised by a model (or a guard around it) to pass the turn to the next model untried.

    ``error`` is what the job fails with when no model is left to try (for example the
    context-window or budget error that made the model unusable). ``retry_after`` (seconds) says
    the model may serve again after that wait (an open circuit breaker whose cooldown ends): the
    chain treats the skip as a hold, so a job left with no other model is re-queued for the wait
    instead of failing.
    """

    def __init__(self, reason: str, error: LLMQError | None = None, retry_after: float | None = None) -> None:
        super().__init__(reason, error, retry_after)
        self.reason = reason
        self.error = error
        self.retry_after = retry_after


def skip_kind(exc: SkipModel) -> str:
    """A bounded label for a skip: the guard's own kind (``breaker_open``, ``too_large``...), else
    ``window`` or ``budget`` from the error that made the model unusable."""
    kind = getattr(exc, "kind", None)
    if isinstance(kind, str):
        return kind
    error = exc.error
    if isinstance(error, ContextLengthExceededError):
        return "window"
    if isinstance(error, BudgetExceededError):
        return "budget"
    return "skipped"


class FallbackModel(ChatModel):
    def __init__(
        self,
        models: Sequence[ChatModel],
        ctx: RunContext,
        skip: SkipCheck | None = None,
        *,
        held: HoldCheck | None = None,
    ) -> None:
        if not models:
            raise ValueError("a fallback chain needs at least one model")
        self.models = list(models)
        self.model_id = self.models[0].model_id
        self.ctx = ctx
        self._skip = skip
        self._held = held
        self.errors: list[LLMQError] = []
        self.skip_errors: list[LLMQError] = []
        #: Models passed over because they must wait (RetryLaterError / DeadlineExceededError).
        self.holds: list[LLMQError] = []

    def _skipped(self, model: ChatModel) -> bool:
        reason = self._skip(model) if self._skip else None
        if reason:
            self.ctx.attempts.append(Attempt(model=model.model_id, status="skipped", message=reason))
            self.ctx.hooks.on_skip(model.model_id, "check")
            return True
        return self._held_now(model)

    def _held_now(self, model: ChatModel) -> bool:
        """Pass over a model whose shared not-before time is longer than this job may wait here."""
        wait = self._held(model) if self._held else None
        if wait is None or wait <= 0 or not self._must_wait(wait):
            return False  # short enough: the model's guard sleeps it out
        hold = self._hold(model.model_id, wait, "not_before")
        self.ctx.attempts.append(
            Attempt(
                model=model.model_id,
                status="skipped",
                error_type=error_type_name(hold),
                wait_s=round(wait, 3),
                message=f"held for {wait:.1f}s",
            )
        )
        self.holds.append(hold)
        self.ctx.hooks.on_skip(model.model_id, "held")
        return True

    def _must_wait(self, wait: float) -> bool:
        """A wait the job cannot sleep out in this worker slot (too long here, or past its deadline)."""
        remaining = self.ctx.remaining()
        return wait > self.ctx.max_inworker_wait_s or (remaining is not None and wait >= remaining)

    def _hold(self, model_id: str, wait: float, why: str) -> LLMQError:
        """The hold a model that can serve only after ``wait`` seconds puts on the job: re-queue for
        the wait, or, past the job's deadline, ``deadline_exceeded`` carrying it."""
        remaining = self.ctx.remaining()
        provider, _, native = model_id.partition(":")
        if remaining is not None and wait >= remaining:
            return DeadlineExceededError(
                f"{model_id} is held for {wait:.1f}s, past the job's deadline",
                provider=provider,
                model=native,
                retry_after=wait,
            )
        return RetryLaterError(
            f"{model_id} is held by the shared {why} for {wait:.1f}s",
            provider=provider,
            model=native,
            code=why,
            retry_after=wait,
            should_retry=False,
        )

    def _moved_on(self, index: int, why: str) -> None:
        """Model ``index`` failed or was skipped and the chain goes on: tell the hooks where to."""
        if index + 1 < len(self.models):
            self.ctx.hooks.on_fallback(self.models[index].model_id, self.models[index + 1].model_id, why)

    def _give_up(self, exc: LLMQError, last: bool) -> bool:
        """True when ``exc`` ends the chain (raised by the caller), False to try the next model."""
        if is_hold(exc):
            self.holds.append(exc)
            return last
        self.errors.append(exc)
        return not exc.falls_back or last

    def _ended(self, exc: LLMQError) -> LLMQError:
        """What to raise when ``exc`` ended the chain (the last model's error, or one that would
        fail on any model)."""
        if is_hold(exc) or (exc.falls_back and self.holds):
            return self._shortest_hold()
        if len(self.models) > 1 and exc.falls_back:
            return self._all_failed()
        return exc

    def _shortest_hold(self) -> LLMQError:
        """No model could serve now; re-queue for the shortest wait that fits the deadline."""
        later = [h for h in self.holds if isinstance(h, RetryLaterError)]
        if not later:
            return self.holds[0]  # every model is held past the job's deadline
        return min(later, key=lambda h: h.retry_after or 0.0)

    def _skipped_by(self, model: ChatModel, exc: SkipModel) -> None:
        self.ctx.attempts.append(Attempt(model=model.model_id, status="skipped", message=exc.reason[:300]))
        self.ctx.hooks.on_skip(model.model_id, skip_kind(exc))
        if exc.retry_after is not None:
            # the model serves again after the wait (a breaker's cooldown): a job left with no
            # other model waits for it, re-queued without a slot, instead of failing
            self.holds.append(self._hold(model.model_id, max(exc.retry_after, 0.0), skip_kind(exc)))
        elif exc.error is not None:
            self.skip_errors.append(exc.error)

    def _all_failed(self) -> LLMQError:
        if not self.errors and self.skip_errors:
            # nothing was tried: every model was unusable, for a typed reason (window, budget)
            return self.skip_errors[-1]
        tried = "; ".join(
            f"{a.model}: {a.error_type or a.status}"
            + (f" ({a.message})" if a.message and a.status == "skipped" else "")
            for a in self.ctx.attempts
            if a.status != "succeeded"
        )
        last = self.errors[-1] if self.errors else None
        return AllModelsFailedError(
            f"every model in the chain failed: {tried}",
            status=last.status if last else None,
            code=error_type_name(last) if last else "skipped",
        )

    def complete(self, request: ChatRequest) -> Completion:
        for i, model in enumerate(self.models):
            last = i == len(self.models) - 1
            if self._skipped(model):
                continue
            try:
                completion = model.complete(request)
            except SkipModel as exc:
                self._skipped_by(model, exc)
                self._moved_on(i, skip_kind(exc))
                continue
            except LLMQError as exc:
                if self._give_up(exc, last):
                    ended = self._ended(exc)
                    if ended is exc:
                        raise
                    raise ended from exc
                self._moved_on(i, error_type_name(exc))
                continue
            self.model_id = model.model_id
            return completion
        raise self._shortest_hold() if self.holds else self._all_failed()

    def stream(self, request: ChatRequest) -> ChatStream:
        return _FallbackStream(self, request)


class _FallbackStream(WrappedStream["FallbackModel"]):
    def __iter__(self) -> Iterator[str]:
        owner = self._owner
        models = owner.models
        for i, model in enumerate(models):
            last = i == len(models) - 1
            if owner._skipped(model):
                continue
            inner: ChatStream | None = None
            try:
                inner = model.stream(self._request)
                self.adopt(inner)
                iterator = iter(inner)
                first = next(iterator, None)
            except SkipModel as exc:
                owner._skipped_by(model, exc)
                owner._moved_on(i, skip_kind(exc))
                continue
            except LLMQError as exc:
                if inner is not None:
                    inner.close()
                if owner._give_up(exc, last):
                    ended = owner._ended(exc)
                    if ended is exc:
                        raise
                    raise ended from exc
                owner._moved_on(i, error_type_name(exc))
                continue
            self.model_id = owner.model_id = model.model_id
            if first is not None:
                yield first
                yield from iterator
            self.finish_from_inner()
            self.model_id = model.model_id
            return
        raise owner._shortest_hold() if owner.holds else owner._all_failed()

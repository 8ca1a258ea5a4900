"""A model bound to its provider, and the per-job context the wrappers around it share.

:class:`ChatModel` is what the pipeline calls; :class:`ProviderModel` binds ``openai:gpt-4o`` to
the OpenAI provider (which gets each :class:`~workers.llm.base.ChatRequest` with ``gpt-4o`` beside
it: the request itself is the one the pipeline built, never converted); retry, fallback and instrumentation are :class:`ChatModel` wrappers
(``retry.py``, ``fallback.py``) composed in one factory (``workers/jobs/chain.py``).
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from opentelemetry.trace import Tracer

from workers.contract import Attempt, Usage
from workers.llm.base import ChatRequest, ChatStream, Completion, Provider
from workers.llm.tracing import NO_TRACER

__all__ = ["CallReport", "ChainHooks", "ChatModel", "ProviderModel", "RunContext", "WrappedStream"]


def _no_sleep(seconds: float) -> None:
    time.sleep(seconds)


@dataclass(frozen=True, slots=True)
class CallReport:
    """One HTTP attempt as the instrumented wrapper saw it (``workers/llm/instrumented.py``)."""

    model: str
    provider: str
    duration_s: float
    #: Request start to the first delta; None for a whole-body call or when none came.
    ttft_s: float | None = None
    usage: Usage | None = None
    error_type: str | None = None


class ChainHooks:
    """No-op callbacks the chain's wrappers call; the worker's observer (``workers/jobs/observe.py``)
    turns them into Prometheus metrics, span events and decision log lines.

    ``on_attempt``/``on_wait``/``on_requeue``/``on_breaker`` come from
    :class:`~workers.guards.model.GuardedModel` (inside the retry wrapper, so every upstream attempt
    passes it), ``on_retry`` from the retry wrapper, ``on_fallback``/``on_skip`` from the fallback
    wrapper, ``on_call`` from the instrumented wrapper, ``on_tool`` from the tool loop. Keep
    implementations cheap and non-raising: they run on the request path. ``model`` is a
    ``provider:model`` id; never label metrics by job.
    """

    def on_attempt(self, model: str, error_type: str | None) -> None:
        """One upstream request ended: ``error_type`` None on success, else the error's type name."""

    def on_wait(self, model: str, reason: str, seconds: float) -> None:
        """The worker slept ``seconds`` before a request (``reason``: ``not_before``, ``rate_limit``)."""

    def on_requeue(self, model: str, reason: str, seconds: float) -> None:
        """A shared wait was longer than a worker slot may be held: the job is re-queued."""

    def on_skip(self, model: str, reason: str) -> None:
        """The model was passed over untried (``breaker_open``, ``breaker_probe_busy``, ``too_large``)."""

    def on_breaker(self, model: str, state: str) -> None:
        """This worker moved the model's shared circuit breaker to ``state`` (``open``, ``closed``)."""

    def on_retry(self, model: str, error_type: str, attempt: int, wait_s: float) -> None:
        """Attempt number ``attempt`` (1-based) of ``model`` failed and is retried after ``wait_s``."""

    def on_fallback(self, from_model: str, to_model: str, error_type: str) -> None:
        """``from_model`` failed (or was skipped): the chain moves on to ``to_model``."""

    def on_call(self, report: CallReport) -> None:
        """One HTTP attempt ended (duration, time to first chunk, tokens)."""

    def on_tool(self, name: str, outcome: str, seconds: float) -> None:
        """A tool call ended: ``outcome`` is ``ok``, ``error``, ``timeout``, ``invalid``, ``unknown``,
        ``cancelled`` (the handler or the job was cancelled) or ``interrupted`` (not run again after a
        crash, or left running when the run lost the job)."""


NO_HOOKS = ChainHooks()


@dataclass(slots=True)
class RunContext:
    """What every wrapper of one job shares: the attempt log, the clock, sleep and deadline."""

    attempts: list[Attempt] = field(default_factory=list)
    #: Cancel-aware sleep (raises JobCancelledError when the job is cancelled while waiting).
    sleep: Callable[[float], None] = _no_sleep
    clock: Callable[[], float] = time.monotonic
    #: Monotonic time after which no new attempt starts.
    deadline: float | None = None
    #: Waits longer than this are not slept in the worker: the job is re-queued instead.
    max_inworker_wait_s: float = 10.0
    #: Set by the pipeline once a delta was published; no retry or fallback after that.
    committed: bool = False
    #: Metrics, span-event and decision-log callbacks (no-ops by default).
    hooks: ChainHooks = NO_HOOKS
    #: Spans of this job's attempts and tools (``workers/llm/tracing.py``); no-op by default.
    tracer: Tracer = NO_TRACER
    #: Provider calls numbered so far (the ledger settles each number once).
    calls: int = 0
    #: Set when this run lost the job's claim (the job moved to another run): it charges nothing more.
    fenced: bool = False

    def remaining(self) -> float | None:
        return None if self.deadline is None else self.deadline - self.clock()


class ChatModel(ABC):
    #: ``provider:model``.
    model_id: str

    @abstractmethod
    def complete(self, request: ChatRequest) -> Completion: ...

    @abstractmethod
    def stream(self, request: ChatRequest) -> ChatStream: ...


class ProviderModel(ChatModel):
    def __init__(self, provider: Provider, model_id: str, native_name: str) -> None:
        self.provider = provider
        self.model_id = model_id
        self.native_name = native_name

    def complete(self, request: ChatRequest) -> Completion:
        return self.provider.complete(self.native_name, request)

    def stream(self, request: ChatRequest) -> ChatStream:
        return self.provider.stream(self.native_name, request)


OwnerT = TypeVar("OwnerT", bound=ChatModel)


class WrappedStream(ChatStream, Generic[OwnerT]):
    """A stream produced by a wrapper (retry, fallback, guard, meter) around its owner's model.

    Built by the owner's ``stream()`` as ``SomeStream(self, request)``: it keeps the owner and the
    request, answers for the owner's model until an inner stream says otherwise, and copies the
    final fields from the inner stream it used (:meth:`finish_from_inner`).
    """

    def __init__(self, owner: OwnerT, request: ChatRequest) -> None:
        super().__init__()
        self._owner = owner
        self._request = request
        self.inner: ChatStream | None = None
        #: The model that actually answered.
        self.model_id: str | None = owner.model_id

    def adopt(self, inner: ChatStream) -> None:
        self.inner = inner
        self.request_id = inner.request_id
        if self.closed:  # closed from outside before this attempt opened: it ends at its first read
            inner.close()

    def finish_from_inner(self) -> None:
        inner = self.inner
        if inner is None:
            return
        self.take_answer(inner)
        self.completed = inner.completed
        model_id = getattr(inner, "model_id", None)  # set by wrapped streams, absent on a provider's
        if model_id:
            self.model_id = model_id

    def close(self) -> None:
        self.closed = True
        if self.inner is not None:
            self.inner.close()

    def __iter__(self) -> Iterator[str]:  # pragma: no cover - subclasses implement
        raise NotImplementedError

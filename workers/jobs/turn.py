"""One model turn: a request through the job's whole chain, its deltas published, cancel and fence
honoured, what it used settled.

A job takes one turn, or several: the tool loop (``workers/jobs/toolloop.py``) one per model answer,
the structured-output repair (``workers/jobs/structured.py``) one per repair. Each goes through
:meth:`Turns.take`, which owns everything a call needs from the run:

* **call**: a whole-body call (``stream: false``) can be ended from outside through its
  :class:`~workers.llm.abort.AbortSignal`; a stream is read delta by delta and each delta goes to
  the job's publisher (coalesced there). The first delta commits the turn: no retry or fallback
  after it, and a later failure is a :class:`~workers.llm.errors.MidStreamError` (a content filter's
  stop keeps its own type, :class:`~workers.llm.errors.ContentFilteredError`).
* **cancel**: the cancel watcher and the publisher's view of the cancel key stop the call; the
  turn ends with :class:`~workers.llm.errors.JobCancelledError`.
* **fence**: a run that lost the job (the claim heartbeat fired :attr:`JobRun.abort`) or is handed
  back at shutdown raises :class:`~workers.llm.errors.RunFencedError`; it charges nothing more.
* **settle**: however a stream ends, its generator chain is closed, so the metered wrapper settles
  what was used (or releases the reservation) before the turn returns or raises.

The turns work on the run's shared state (:class:`~workers.jobs.run.JobRun`: its publisher, its
context, the text so far, the abort hook the heartbeat and the shutdown fire).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

from workers.jobs.resources import CancelHooks
from workers.jobs.run import JobRun
from workers.jobs.store import JobStore
from workers.llm.base import ChatRequest, ChatStream, Completion
from workers.llm.errors import (
    ContentFilteredError,
    JobCancelledError,
    LLMQError,
    MidStreamError,
    RunFencedError,
    error_type_name,
)
from workers.llm.model import ChatModel

__all__ = ["Turns", "abort_stream"]

log = logging.getLogger("llmq.pipeline")


class Turns:
    """The model turns of one run, each through the whole chain (``model``)."""

    def __init__(
        self,
        run: JobRun,
        model: ChatModel,
        *,
        store: JobStore,
        cancel_watcher: CancelHooks | None,
        clock: Callable[[], float],
    ) -> None:
        self.run = run
        self.model = model
        self._store = store
        self._watcher = cancel_watcher
        self._clock = clock

    def begin_next(self) -> None:
        """A later turn starts (a tool-loop or repair turn): its messages differ, so every model is
        planned again, and retries and fallback are allowed again until its first delta."""
        run = self.run
        run.ctx.committed = False
        if run.meter is not None:
            run.meter.new_turn()

    def take(self, request: ChatRequest, *, last: bool = False) -> Completion:
        """One turn: the answer to ``request``, its deltas published (module docstring). ``last``: the
        job ends right after this turn, so the deltas still coalescing go out with its ending (the
        terminal flush sends them first, before its events) instead of in a flush of their own."""
        if not self.run.job.stream:
            return self._whole(request)
        return self._streamed(request, last)

    def _whole(self, request: ChatRequest) -> Completion:
        run = self.run
        if request.abort is not None:
            run.abort = request.abort.fire
            if self._watcher is not None:
                self._watcher.register(run.job.id, request.abort.fire)
        try:
            completion = self.model.complete(request)
        except RunFencedError:
            raise
        except LLMQError:
            if run.ctx.fenced or run.handed_back:  # aborted by the heartbeat or the shutdown
                raise RunFencedError("the call was stopped: the job moved or is handed back") from None
            raise
        run.model_used = getattr(self.model, "model_id", None)
        return completion

    def _streamed(self, request: ChatRequest, last: bool) -> Completion:
        stream = self.model.stream(request)
        try:
            return self._read(stream, last)
        finally:
            self._release(stream.close)

    def _release(self, abort: Callable[[], None]) -> None:
        """The call ended: its abort hook goes, and with it what the hook held (the stream's whole
        chain: response, reader, wrappers), instead of living on until the job's ending is written.
        A cancel heard from now on is remembered by the watcher for the next call's hook."""
        run = self.run
        if run.abort == abort:  # (not a hook set since, e.g. the tool loop's)
            run.abort = None
            if self._watcher is not None:
                self._watcher.unregister(run.job.id)

    def _read(self, stream: ChatStream, last: bool) -> Completion:
        run = self.run
        publisher = run.publisher
        run.abort = stream.close
        if self._watcher is not None:
            self._watcher.register(run.job.id, stream.close)
        deltas = iter(stream)
        try:
            parts = run.text_parts
            for text in deltas:
                parts.append(text)
                if run.ttft_s is None:
                    run.ttft_s = self._clock() - run.started
                    run.ctx.committed = True
                publisher.delta(text)
                if publisher.cancelled:
                    raise JobCancelledError("cancelled while streaming")
        except (JobCancelledError, RunFencedError) as exc:
            if isinstance(exc, RunFencedError):
                run.ctx.fenced = True  # nothing of this run is charged any more
            abort_stream(stream, deltas)
            raise
        except LLMQError as exc:
            abort_stream(stream, deltas)
            if run.ctx.fenced or run.handed_back:
                raise RunFencedError("the stream was stopped: the job moved or is handed back") from exc
            if publisher.cancelled or self._store.is_cancelled(run.keys):
                raise JobCancelledError("cancelled while streaming") from exc
            if run.ttft_s is not None and not isinstance(exc, ContentFilteredError):
                # (a filter's verdict keeps its type: it is terminal anyway, and it is the cause the
                # producer must see, streamed or not)
                raise MidStreamError(
                    f"{error_type_name(exc)} after the first delta: {exc.message}",
                    provider=exc.provider,
                    model=exc.model,
                    status=exc.status,
                    code=error_type_name(exc),
                ) from exc
            raise
        except BaseException:
            # Redis went away mid-stream (or worse): close the upstream call; settling what it used
            # may fail too (the ledger is on the same Redis), its reservation lease then lapses
            try:
                abort_stream(stream, deltas)
            except Exception as exc:
                log.warning("job %s: closing the stream after a failure: %s", run.job.id, exc)
            raise
        if not last:
            publisher.flush()
        run.model_used = getattr(stream, "model_id", None)
        return stream.to_completion()


def abort_stream(stream: ChatStream, deltas: Iterator[str]) -> None:
    """Stop a stream now: close the generator chain (wrappers settle what was used) and the response."""
    close = getattr(deltas, "close", None)
    if close is not None:
        close()
    stream.close()

"""How a run ends a job: the stored result and the one terminal event, written in one round trip.

Every job ends with exactly one terminal event (``done``, ``error`` or ``cancelled``) and a stored
:class:`~workers.contract.CompletionResult`. :meth:`Endings.succeeded`, :meth:`Endings.failed` and
:meth:`Endings.cancelled` build the result from the run (``workers/jobs/run.py``) and write it the
one way there is (:meth:`Endings._terminal`): the result, the history entry, the producer's reply
and (a cache leader's clean answer) the response cache entry first, then the last events, then the claim released, all in the run's fenced flush (a run
that lost the job writes none of it: :class:`~workers.llm.errors.RunFencedError`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from workers.contract import (
    CancelledEvent,
    CompletionResult,
    DoneEvent,
    ErrorEvent,
    ErrorInfo,
    StreamEvent,
    Timings,
    ToolCallEvent,
    Usage,
    UsageEvent,
)
from workers.jobs.cachedrun import Served, served_result
from workers.jobs.run import JobRun
from workers.jobs.store import JobStore
from workers.llm.base import Completion
from workers.llm.errors import JobCancelledError, LLMQError

__all__ = ["Endings"]


class Endings:
    """The endings of the process's runs (``store``: where results go; ``clock``: the runs' clock)."""

    def __init__(self, store: JobStore, clock: Callable[[], float]) -> None:
        self._store = store
        self._clock = clock

    def succeeded(self, run: JobRun, completion: Completion) -> CompletionResult:
        job = run.job
        # the metering wrapper always sets usage: the provider's, or our labelled estimate
        usage = completion.usage or Usage(estimated=True)
        result = self._result(run, "succeeded")
        result.content = completion.text
        result.tool_calls = completion.tool_calls
        result.reasoning_blocks = list(completion.reasoning_blocks)
        result.finish_reason = completion.finish_reason
        result.logprobs, result.alternatives = completion.logprobs, list(completion.alternatives)
        result.usage = usage
        result.parsed, result.repairs, result.refusal = run.parsed, run.repairs, completion.refusal
        events: list[StreamEvent] = [ToolCallEvent(job_id=job.id, seq=0, tool_call=c) for c in completion.tool_calls]
        events.append(UsageEvent(job_id=job.id, seq=0, usage=usage))
        self._terminal(run, DoneEvent(job_id=job.id, seq=0, result=result), result, before=events)
        return result

    def served(self, run: JobRun, served: Served) -> CompletionResult:
        """End the job with an answer it did not call for (``cached``, cost 0), the events a live run
        sends: a hit's text as one delta; a follower republished the leader's deltas, and sends
        what they did not show of the answer (all of it when the leader streamed none)."""
        job = run.job
        result = served_result(self._result(run, "succeeded"), served)
        run.model_used = result.model_used
        content = result.content or ""
        if content.startswith(served.shown):  # else the leader's deltas were not its answer (a tool loop's turns)
            run.publisher.delta(content[len(served.shown) :])
        events: list[StreamEvent] = [ToolCallEvent(job_id=job.id, seq=0, tool_call=c) for c in result.tool_calls]
        events.append(UsageEvent(job_id=job.id, seq=0, usage=result.usage))
        self._terminal(run, DoneEvent(job_id=job.id, seq=0, result=result), result, before=events)
        return result

    def failed(self, run: JobRun, exc: LLMQError) -> CompletionResult:
        result = self._result(run, "failed")
        info = exc.to_info()
        result.content = "".join(run.text_parts)
        result.error = info
        self._terminal(run, ErrorEvent(job_id=run.job.id, seq=0, error=info, result=result), result)
        return result

    def cancelled(self, run: JobRun, exc: JobCancelledError) -> CompletionResult:
        result = self._result(run, "cancelled")
        result.content = "".join(run.text_parts)
        result.error = ErrorInfo(type="cancelled", message=exc.message or "cancelled")
        self._terminal(run, CancelledEvent(job_id=run.job.id, seq=0, result=result), result)
        return result

    def _result(self, run: JobRun, status: Literal["succeeded", "failed", "cancelled"]) -> CompletionResult:
        job = run.job
        queued = max(0.0, run.started_wall - job.submitted_at) if job.submitted_at else None
        meter = run.meter
        result = CompletionResult(
            usage=(meter.last_usage if meter and meter.last_usage else Usage()),
            cost_usd=float(meter.cost_usd) if meter and meter.cost_usd is not None else None,
            truncated_messages=meter.dropped if meter else 0,
            prompt=run.prompt,
            id=job.id,
            status=status,
            attempts=run.ctx.attempts,
            tenant=job.tenant,
            metadata=job.metadata,
            tags=job.tags,
            user=job.user,
            model_used=run.model_used,
            timings=Timings(
                queued_s=round(queued, 4) if queued is not None else None,
                ttft_s=round(run.ttft_s, 4) if run.ttft_s is not None else None,
                total_s=round(self._clock() - run.started, 4),
            ),
        )
        if run.tools is not None:
            run.tools.fill(result)
        return result

    def _terminal(
        self,
        run: JobRun,
        event: DoneEvent | ErrorEvent | CancelledEvent,
        result: CompletionResult,
        before: list[StreamEvent] | None = None,
    ) -> None:
        """Publish the last events, store the result and release the claim in one round trip
        (the result first, so a consumer that sees the terminal event can read it)."""
        raw = result.model_dump_json()  # once: the stored result, the reply and the cache entry
        writes = self._store.result_writes(run.keys, result, run.job, run=run.publisher.run, raw=raw)
        if run.cached is not None:  # a leader's clean answer goes into the cache in the same round trip
            writes += run.cached.terminal_writes(result, raw)
        run.publisher.refresh_ttl()
        run.publisher.emit_many([*(before or []), event], writes=writes, release_claim=bool(run.token))
        run.token = ""  # released in that same round trip
        if run.cached is not None:
            run.cached.flushed()  # and the lead ended in it

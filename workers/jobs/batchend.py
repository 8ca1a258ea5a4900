"""Answered provider-batch lines ended in bulk by the batcher, without a run of their own.

A ``succeeded`` line of an ordinary job (the common case) is ended where the batcher files it: the
jobs are claimed in one round trip (the same claim script as a run's, so a job that already ended,
or that a run holds, is left alone), their costs settled at the batch price in one round trip
(:meth:`~workers.accounting.ledger.Ledger.settle_many`, once per job however often this repeats),
and their endings (usage and ``done`` events, the stored result, the reply, the history entry, the
claim released) written by :class:`~workers.jobs.ending.Endings` as a run writes them, the flushes
of all the jobs sent in one round trip (:class:`~workers.jobs.events.PipelinedFlushes`). Then each
job's metrics are recorded as a run records them.

A line this does not end is handed back to the caller, which sends its job to the queue, where a
run ends it from its line (``workers/jobs/batchrun.py``): a job whose ending needs more than the
answer (structured-output checks that may repair, the response cache, a published prompt, a
sliding window, usage to estimate), one cancelled meanwhile (its result is discarded, its cost
settled), one another run holds, and any line whose answer does not parse here.

A batcher killed anywhere in here leaves each job claimed (its lease runs out) or ended; the lease
holder after it collects the batch again and ends, or hands on, what is not ended.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal

from pydantic import TypeAdapter

from workers.accounting.metered import Meter
from workers.accounting.money import Reservation, ScopeState
from workers.contract import (
    Attempt,
    CompletionJob,
    CompletionResult,
    JobKeys,
    JsonObjectFormat,
    JsonSchemaFormat,
    split_model_id,
)
from workers.jobs.batched import BatchLane
from workers.jobs.batchstate import JobLine
from workers.jobs.ending import Endings
from workers.jobs.events import EventPublisher, PipelinedFlushes
from workers.jobs.resources import JobResources
from workers.jobs.run import JobRun
from workers.jobs.store import ClaimOutcome
from workers.llm.base import ChatRequest, Completion
from workers.llm.batchapi import LineOutcome
from workers.llm.errors import LLMQError
from workers.llm.model import RunContext

__all__ = ["Ended", "LineEnder"]

log = logging.getLogger("llmq.batcher")
_ATTEMPTS: TypeAdapter[list[Attempt]] = TypeAdapter(list[Attempt])


@dataclass(frozen=True, slots=True)
class Ended:
    """A job ended here: what its Flower task shows."""

    job_id: str
    status: str
    runtime_s: float


@dataclass
class _Line:
    line: JobLine
    job: CompletionJob
    completion: Completion
    reservation: Reservation | None
    cost: Decimal | None
    token: str = ""


class LineEnder:
    """Ends answered lines in bulk (module docstring) with the worker's resources."""

    def __init__(self, lane: BatchLane, res: JobResources, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.lane = lane
        self.res = res
        self._clock = clock
        self._endings = Endings(res.store, clock)

    def end(self, rows: Sequence[tuple[JobLine, LineOutcome]]) -> tuple[list[Ended], list[str]]:
        """End what can be ended here; returns those ended and the ids of the jobs to send to the
        queue (their runs end them from their lines)."""
        back: list[str] = []
        ready: list[_Line] = []
        for line, outcome in rows:
            found = self._prepare(line, outcome)
            if found is None:
                back.append(line.job_id)
            else:
                ready.append(found)
        if not ready:
            return [], back
        store = self.res.store
        for item in ready:
            item.token = uuid.uuid4().hex
        claims = store.claim_many([(JobKeys(i.job.id), i.token) for i in ready])
        mine: list[tuple[_Line, int, int, bytes]] = []
        let_go: list[tuple[JobKeys, str]] = []
        for item, claim in zip(ready, claims, strict=True):
            if claim.run == ClaimOutcome.DONE:
                continue  # ended already (a run, or this step before a crash)
            if claim.run == ClaimOutcome.BUSY:
                back.append(item.job.id)  # a run holds it: its redelivery ends it once the claim is free
                continue
            if claim.cancelled:
                let_go.append((JobKeys(item.job.id), item.token))
                back.append(item.job.id)  # its run discards the answer and settles its cost
                continue
            mine.append((item, claim.run, claim.last_seq, claim.attempts_json))
        store.release_many(let_go)
        if not mine:
            return [], back
        ledger = self.res.ledger
        settle = [(i.reservation, i.cost or Decimal(0)) for i, _, _, _ in mine if i.reservation is not None]
        if settle and ledger is not None:
            latest: dict[str, ScopeState] = {}  # the budget gauges show each scope's state after the last settlement
            for settlement in ledger.settle_many(settle):
                latest.update((state.scope, state) for state in settlement.scopes)
            self.res.metrics.usage.record_scopes(latest.values())
        flushes = PipelinedFlushes(self.res.redis)
        settings = self.res.settings
        ended: list[tuple[_Line, CompletionResult, float]] = []
        for item, run_no, last_seq, attempts_json in mine:
            job = item.job
            keys = JobKeys(job.id)
            publisher = EventPublisher(
                self.res.redis,
                keys,
                run=run_no,
                start_seq=last_seq,
                maxlen=settings.events_maxlen,
                ttl_s=settings.result_ttl_s,
                claim_lease_ms=store.claim_lease_ms,
                token=item.token,
                publish_deltas=job.stream,
                flusher=flushes,
            )
            ctx = RunContext(attempts=_ATTEMPTS.validate_json(attempts_json) if attempts_json else [])
            started = self._clock()
            run = JobRun(job, keys, publisher, ctx, started_wall=time.time(), started=started, token=item.token)
            meter = run.meter = Meter(job, self.res.counter, self.res.prices, None, ctx)
            meter.last_usage = item.completion.usage
            meter.cost_usd = item.cost
            run.model_used = item.line.group
            if job.stream and item.completion.text:
                publisher.delta(item.completion.text)  # the answer at once, as a cached one is sent
            result = self._endings.succeeded(run, item.completion)
            ended.append((item, result, self._clock() - started))
        replies = flushes.execute()
        out: list[Ended] = []
        for (item, result, runtime), reply in zip(ended, replies[-len(ended) :], strict=True):
            if reply == -1:  # its claim was lost between the two round trips: whoever holds it ends it
                back.append(item.job.id)
                continue
            self.res.metrics.jobs.record(result)
            if item.completion.usage is not None:
                self.res.metrics.usage.record_usage(item.line.group, item.completion.usage, item.cost)
            out.append(Ended(item.job.id, result.status, runtime))
        return out, back

    def _prepare(self, line: JobLine, outcome: LineOutcome) -> _Line | None:
        """The line's job, answer and cost, when its ending needs nothing more; else None."""
        if outcome.kind != "succeeded" or not line.job or line.state != "done":
            return None
        job = self.lane.taken_jobs.pop(line.job_id, None)
        if job is None:
            try:
                job = CompletionJob.model_validate_json(line.job)
            except ValueError:
                return None
        if (
            job.prompt is not None
            or job.cache is not None
            or self.res.config.cache.routes
            or job.truncate != "error"
            or isinstance(job.response_format, JsonObjectFormat | JsonSchemaFormat)
        ):
            return None
        api = self.lane.api_for(line.group)
        if api is None:
            return None
        _, native = split_model_id(line.group)
        try:
            completion = api.answer(native, ChatRequest(messages=[], params=job, tools=job.client_tools), outcome)
        except LLMQError:
            return None  # its run ends it with the same error, typed, as the live call would
        usage = completion.usage
        if usage is None or (completion.thinking and not usage.reasoning_tokens):
            return None  # usage to estimate: the run's meter counts it
        try:
            price = self.res.prices.lookup(line.group).cost(usage)
        except LLMQError:
            return None
        cost = price * self.lane.discount(line.group) if price is not None else None
        return _Line(line, job, completion, self.lane.reservation(line), cost)

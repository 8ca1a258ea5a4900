"""Jobs handed straight to the provider batch lane by their producers, taken in bulk by the batcher.

A producer that sees a live batcher announce it (``WorkerPresence.batch_intake``) hands a job that
may wait to the lane in its submit's round trip: the job's line (state ``new``, its payload) and its
id on the intake list, no queue message (``producers/core.py``). The batcher takes the handed ids
in order, a chunk per pass (:meth:`LineIntake.take`), and for each job does what the run that
parks a queued job does (``workers/jobs/batchrun.py``), in bulk:

* it decides again, with the worker's catalog and config (:meth:`BatchLane.choose`): a job that is
  not for a batch after all (its model's provider has none here, its deadline came near, it was
  cancelled, its payload or its prompt does not hold) is sent to the queue as its producer would
  have sent it, its line marked ``live`` and ``onward`` so its run starts it and runs it live (or
  ends it cancelled, or with the error);
* the others get their line's body (the live call's bytes) and a reservation of the worst case at
  the batch price (:meth:`~workers.accounting.ledger.Ledger.reserve_many`, one round trip; a job
  the budget refuses goes to the queue, where its run fails it as it fails live; one it is busy
  for goes back on the intake list, for a later pass), then each line
  becomes ``pending`` with its job's ``start`` event in one script per job, all in one round trip
  (:meth:`BatchStore.take`), and joins its group's waiting lines (:meth:`BatchStore.park_ids`).

Every write is idempotent or conditional on the line still being ``new``, and the ids leave the
intake list only after (:meth:`BatchStore.took`): a batcher killed anywhere here leaves the ids
listed, and the lease holder after it takes them again (a reservation is made again under the same
call number, which replaces it; a line already ``pending`` only joins its group, once).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from workers.accounting.ledger import ReserveCall
from workers.accounting.metered import Meter
from workers.accounting.money import Reservation
from workers.contract import CompletionJob, StartEvent
from workers.jobs.batched import BATCH_ATTEMPT, BatchLane, reservation_json
from workers.jobs.batchstate import JobLine
from workers.jobs.chain import resolve_chain
from workers.jobs.resources import JobResources
from workers.llm.base import ChatRequest
from workers.llm.errors import BudgetBusyError, LLMQError
from workers.llm.model import RunContext
from workers.prompts.render import render_job

__all__ = ["LineIntake", "Taken"]

log = logging.getLogger("llmq.batcher")

Send = Callable[[dict[str, Any]], None]


@dataclass
class Taken:
    """What one :meth:`LineIntake.take` did: the jobs now waiting in a batch group (their payloads,
    for Flower) and the ids sent on to the queue."""

    parked: list[dict[str, Any]] = field(default_factory=list)
    queued: list[str] = field(default_factory=list)
    #: Ids put back on the intake list (the budget was busy with reservations in flight).
    later: list[str] = field(default_factory=list)


@dataclass
class _Ready:
    job: CompletionJob
    payload: dict[str, Any]
    group: str
    fields: dict[str, Any]
    start: bytes
    call: ReserveCall | None = None
    reservation: Reservation | None = None


class LineIntake:
    """Takes handed-over jobs into the batch lane (module docstring) with the worker's resources."""

    def __init__(self, lane: BatchLane, res: JobResources, send: Send, *, clock: Callable[[], float] = time.time):
        self.lane = lane
        self.res = res
        self._send = send
        self._clock = clock

    def take(self, ids: Sequence[str]) -> Taken:
        store = self.lane.store
        taken = Taken()
        unique = list(dict.fromkeys(ids))
        lines = store.lines_of(unique)
        ready: list[_Ready] = []
        again: list[tuple[str, str]] = []
        onward: list[tuple[str, dict[str, Any]]] = []
        for job_id, line in zip(unique, lines, strict=True):
            if line is None:
                continue  # expired unread, or sent on and forgotten before a crash
            if line.state == "pending" and line.group:
                again.append((job_id, line.group))  # taken before a crash: it joins its group (once)
                continue
            if line.state == "live" and line.onward and line.job:
                onward.append((job_id, json.loads(line.job)))  # marked, then killed before its send
                continue
            if line.state != "new":
                continue  # a run took it (a message sent for it reached a worker)
            found = self._prepare(line)
            if isinstance(found, _Ready):
                ready.append(found)
            elif found is not None:
                onward.append((job_id, found))
        later = self._reserve(ready, onward)
        if ready:
            keep = self.lane.keep_s
            rows = [(r.job.id, r.fields, r.start) for r in ready]
            done = store.take(rows, ttl_s=keep, maxlen=self.res.settings.events_maxlen)
            for item, code in zip(ready, done, strict=True):
                if code == 1:
                    again.append((item.job.id, item.group))
                    taken.parked.append(item.payload)
                    self.lane.remember(item.job)
                    continue
                # a run took it meanwhile, it ended, or it was cancelled: the reservation is not used
                self.lane.release(JobLine(item.job.id, "new", reservation=str(item.fields["reservation"])))
                if code == 2:
                    onward.append((item.job.id, item.payload))  # its run ends it cancelled
        store.park_ids(again)
        # marked first, so a run that starts at once sees the decision (live, unstarted); a batcher
        # killed before the sends finds them marked and sends them (again: their claims run each once)
        store.send_on([job_id for job_id, _ in onward])
        for job_id, payload in onward:
            self._send(payload)
            taken.queued.append(job_id)
        store.hand_back(later)
        taken.later = later
        return taken

    def _prepare(self, line: JobLine) -> _Ready | dict[str, Any] | None:
        """The job ready to take, its payload to send to the queue instead, or None (nothing to do)."""
        try:
            payload: dict[str, Any] = json.loads(line.job)
        except ValueError:
            log.warning("batcher: job %s was handed over without a readable payload", line.job_id)
            return None
        try:
            job = CompletionJob.model_validate_json(line.job)  # from the bytes: ~2.5x faster than the dict
        except ValueError:
            return payload  # its run rejects it, typed
        lane, res = self.lane, self.res
        deadline_at = None if job.deadline_s is None else (job.submitted_at or self._clock()) + job.deadline_s
        try:
            chain = resolve_chain(job, res.catalog)
            left = None if deadline_at is None else deadline_at - self._clock()
            if lane.choose(job, chain, left) != "batch":
                return payload
            model_id = chain[0]
            rendered = render_job(job, res.redis, max_chars=res.settings.prompt_max_chars)
            meter = Meter(job, res.counter, res.prices, None, RunContext())
            meter.price_factor = lane.discount(model_id)
            request = ChatRequest(messages=rendered.messages, params=job, tools=job.client_tools)
            body, plan = lane.line_body(model_id, request, meter)
        except LLMQError:
            return payload  # its run meets the same error and ends the job with it
        start = StartEvent(job_id=job.id, seq=0, model=model_id, prompt=rendered.prompt)
        start.run = 1
        fields: dict[str, Any] = {"group": model_id, "body": body, "job": line.job, "reservation": ""}
        if deadline_at is not None:
            fields["deadline"] = repr(deadline_at)
        ready = _Ready(job, payload, model_id, fields, start.model_dump_json().encode())
        ledger = res.ledger
        if ledger is not None:
            ready.call = ledger.reserve_call(
                job.id,
                BATCH_ATTEMPT,
                job.tenant,
                meter.priced(plan.worst_case_usd) or 0,
                lease_s=float(lane.keep_s),
                tags=job.tags,
                user=job.user,
                model=plan.model,
            )
        return ready

    def _reserve(self, ready: list[_Ready], onward: list[tuple[str, dict[str, Any]]]) -> list[str]:
        """The worst cases of ``ready`` reserved in one round trip. A job the budget refuses goes to
        ``onward`` (its run fails it as it fails live); one the budget is busy for (reservations in
        flight) is returned, to be taken at a later pass."""
        ledger = self.res.ledger
        calls = [r for r in ready if r.call is not None]
        if ledger is None or not calls:
            return []
        results = ledger.reserve_many([r.call for r in calls if r.call is not None])
        dropped: set[str] = set()
        later: list[str] = []
        for item, result in zip(calls, results, strict=True):
            if isinstance(result, Reservation):
                item.reservation = result
                item.fields["reservation"] = reservation_json(result)
                continue
            dropped.add(item.job.id)
            if isinstance(result, BudgetBusyError):
                later.append(item.job.id)
            else:
                onward.append((item.job.id, item.payload))  # its run meets the refusal, typed
        ready[:] = [r for r in ready if r.job.id not in dropped]
        return later

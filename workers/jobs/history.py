"""The history writes of an ended job, run inside its terminal write (``workers/jobs/store.py``).

Layout and retention: ``workers/contract/history.py``. A job costs one summary in its day's hash,
one member in the day's ``all`` set and in its tenant, status and model sets (two model sets when
the model used differs from the one asked for), one per error type for a job that did not
succeed, and the request itself for a failed job (a replay re-submits it). Every key written gets
the day's ``EXPIREAT``, so memory is bounded by ``LLMQ_HISTORY_DAYS`` without any sweeper.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

from pydantic import TypeAdapter

from workers.contract import Attempt, CompletionJob, CompletionResult
from workers.contract.history import HistoryKeys, day_of, expire_at
from workers.jobs.events import Write
from workers.jobs.spans import job_trace_id

__all__ = ["HistoryWriter", "summary_json", "trace_id_of"]


_ATTEMPTS: TypeAdapter[list[Attempt]] = TypeAdapter(list[Attempt])


def _prompt_name(job: CompletionJob) -> str | None:
    info = job.prompt
    if info is None:
        return None
    which = info.version if info.version is not None else info.label
    return f"{info.name}@{which}" if which is not None else info.name


def trace_id_of(job: CompletionJob, *, traced: bool) -> str | None:
    """The trace the job's spans are in: its ``traceparent``'s, else (when the worker traces) the
    one derived from its id (``workers/jobs/spans.py``); None when there is no trace."""
    if job.traceparent:
        return job.traceparent.split("-")[1]
    return format(job_trace_id(job.id), "032x") if traced else None


def summary_json(
    job: CompletionJob,
    result: CompletionResult,
    *,
    finished_at: float,
    run: int = 1,
    replayable: bool = False,
    trace_id: str | None = None,
) -> str:
    """The :class:`~workers.contract.history.JobSummary` of one ended job, as JSON: counts, names
    and numbers, no message text. Built by hand on the hot path (every job ends here): about a
    third of the cost of dumping a constructed model; ``tests/workers/jobs/test_history.py`` checks
    it validates as a ``JobSummary`` and equals one built field by field."""
    fmt = job.response_format
    request: dict[str, object] = {"messages": len(job.messages or ()), "max_tokens": job.max_tokens}
    if job.prompt is not None:
        request["prompt"] = _prompt_name(job)
    if job.template is not None:
        request["template"] = True
    if job.tools:
        request["tools"] = [t if isinstance(t, str) else t.function.name for t in job.tools]
    if not job.stream:
        request["stream"] = False
    if job.deadline_s is not None:
        request["deadline_s"] = job.deadline_s
    if fmt is not None:
        request["response_format"] = fmt.type
    if job.metadata:
        request["metadata"] = job.metadata
    if job.webhook is not None:
        request["webhook"] = job.webhook
    head: dict[str, object] = {
        "id": job.id,
        "tenant": job.tenant,
        "status": result.status,
        "model": job.model,
        "finished_at": finished_at,
        "run": run,
        "request": request,
    }
    optional = {
        "model_used": result.model_used,
        "cost_usd": result.cost_usd,
        "submitted_at": job.submitted_at,
        "trace_id": trace_id,
        "replay_of": job.replay_of,
        "fallbacks": job.fallbacks or None,
        "replayable": replayable or None,
    }
    head.update((k, v) for k, v in optional.items() if v is not None)
    parts = [json.dumps(head, separators=(",", ":"))[:-1]]
    parts += [',"usage":', result.usage.model_dump_json(exclude_defaults=True)]
    parts += [',"timings":', result.timings.model_dump_json(exclude_none=True)]
    if result.attempts:
        parts += [',"attempts":', _ATTEMPTS.dump_json(result.attempts, exclude_defaults=True).decode()]
    if result.error is not None:
        parts += [',"error":', result.error.model_dump_json(exclude_defaults=True)]
    parts.append("}")
    return "".join(parts)


class HistoryWriter:
    """Builds the history writes of ended jobs; ``days`` whole days of retention after the day ended.
    ``traced``: the worker exports spans, so a job without a ``traceparent`` has a derived trace id."""

    def __init__(self, days: int, *, traced: bool = False, clock: Callable[[], float] = time.time) -> None:
        if days < 1:
            raise ValueError("history needs at least one day of retention (LLMQ_HISTORY_DAYS=0 turns it off)")
        self.days = days
        self.traced = traced
        self._clock = clock
        #: (UTC day number, that day's keys, when they expire): built once a day, not once a job
        self._day: tuple[int, HistoryKeys, int] | None = None

    def _day_of(self, now: float) -> tuple[int, HistoryKeys, int]:
        number = int(now // 86_400)  # a unix day is 86,400 s (no leap seconds): day_of(now) changes with it
        cached = self._day
        if cached is None or cached[0] != number:
            day = day_of(now)
            cached = self._day = (number, HistoryKeys(day), expire_at(day, self.days))
        return cached

    def writes(self, job: CompletionJob, result: CompletionResult, *, run: int = 1) -> list[Write]:
        now = self._clock()
        _, keys, at = self._day_of(now)
        # a failed job's request is kept for replay (not a payload the worker could not even read:
        # ``reject_invalid`` ends those with a stand-in job that has nothing to send again)
        has_request = job.messages is not None or job.prompt is not None or job.template is not None
        failed = result.status == "failed" and has_request
        trace_id = trace_id_of(job, traced=self.traced)
        summary = summary_json(job, result, finished_at=now, run=run, replayable=failed, trace_id=trace_id)
        job_id = job.id
        sets = {keys.all, keys.tenant(job.tenant), keys.status(result.status), keys.model(job.model)}
        if result.model_used:
            sets.add(keys.model(result.model_used))
        if result.status != "succeeded":
            if result.error is not None:
                sets.add(keys.error(result.error.type))
            for attempt in result.attempts:
                if attempt.error_type:
                    sets.add(keys.error(attempt.error_type))
        writes: list[Write] = [("HSET", keys.jobs, job_id, summary), ("EXPIREAT", keys.jobs, at)]
        for key in sorted(sets):
            writes.append(("ZADD", key, now, job_id))
            writes.append(("EXPIREAT", key, at))
        if failed:
            writes.append(("HSET", keys.requests, job_id, job.model_dump_json(exclude_none=True)))
            writes.append(("EXPIREAT", keys.requests, at))
        return writes

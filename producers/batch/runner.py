"""Pass two of a batch run: submit with a bounded window, collect from one reply list, append.

The window bounds memory (``in_flight`` never holds more than ``window`` entries) and keeps the
workers busy; results come back on one Redis list per batch (``CompletionJob.reply_to``), read
with BLPOP plus LPOP of whatever else is waiting. Only ids in flight are accepted, so a result
delivered twice (a job re-run after a worker restart, a notification left from an earlier run)
is written once. A wait without results looks in the job store for missed notifications.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import ValidationError

from producers.batch.files import JsonlAppender, ResumeState, iter_lines, read_outputs
from producers.batch.formats import LineError, LineIssue, ParsedLine, parse_line
from producers.batch.progress import BatchCounters, BatchProgress
from producers.batch.records import invalid_record, result_record
from producers.batch.validate import BatchValidationError, validate_file
from producers.client import Client
from producers.errors import InvalidJobError, SubmitRefusedError
from workers.contract import CompletionJob, CompletionResult, JobKeys

__all__ = ["VIA_BATCH", "BatchRunner", "BatchSummary", "Via", "batch_id_for", "default_errors_path", "job_id_for"]

#: ``llmq batch --via``: ``queue`` runs every line live; ``provider`` lets every line wait for a provider
#: batch (half the price, within the provider's window); ``auto`` sends a line to one when its
#: deadline leaves room for the window (``workers/jobs/batched.py``). A line's own ``batch`` wins.
Via = Literal["queue", "provider", "auto"]
VIA_BATCH: dict[Via, Literal["allow", "auto"] | None] = {"queue": None, "provider": "allow", "auto": "auto"}

_SAFE_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,80}$")
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


@dataclass
class BatchSummary:
    batch_id: str
    output: Path
    errors: Path
    lines: int = 0
    valid: int = 0
    invalid: int = 0
    #: lines skipped because an earlier run already wrote them
    resumed: int = 0
    submitted: int = 0
    #: submitted lines whose job already existed (in flight or finished in an earlier run)
    reused: int = 0
    #: of those, jobs no worker had claimed, sent again (see ``BatchRunner._resume_job``)
    resent: int = 0
    succeeded: int = 0
    failed: int = 0
    #: lines an earlier run wrote to the errors file as failed: they have no successful result
    earlier_failed: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    elapsed_s: float = 0.0
    interrupted: bool = False
    stalled: bool = False
    #: jobs still running when the run stopped early (a rerun collects them)
    left_in_flight: int = 0
    #: the most jobs in flight at once (never above the window)
    max_in_flight: int = 0
    #: times the queue refused a line (Redis full ...) and the run paused, and seconds spent paused
    pauses: int = 0
    paused_s: float = 0.0

    @property
    def complete(self) -> bool:
        return not (self.interrupted or self.stalled)

    @property
    def all_succeeded(self) -> bool:
        """Every line of the input has a successful result (this run's or an earlier one's)."""
        return self.complete and not (self.failed or self.invalid or self.earlier_failed)


def job_issue(line: int, custom_id: str, exc: InvalidJobError) -> LineIssue:
    """A producer-side refusal as a batch line issue, in the input's terms."""
    first = exc.errors[0] if exc.errors else {}
    loc = [str(part) for part in first.get("loc", ())]
    param = ".".join(loc) or None
    if loc[:1] == ["prompt"]:
        code = "invalid_prompt"
    elif first.get("type") == "unknown_tool":
        code = "unknown_tool"
    elif first.get("type") in ("unknown_model", "unknown_provider", "unpriced_model"):
        return LineIssue(line, str(first["type"]), str(first["msg"]), param, custom_id)  # the model, named once
    else:
        code = "invalid_job"
    return LineIssue(line, code, str(exc).removeprefix("invalid job: "), param or "prompt", custom_id)


def default_errors_path(output: str | Path) -> Path:
    """``out.jsonl`` -> ``out.errors.jsonl``."""
    out = Path(output)
    return out.with_name(f"{out.stem}.errors{out.suffix or '.jsonl'}")


def batch_id_for(input_path: str | Path, output_path: str | Path) -> str:
    """The same input written to the same output is the same batch (so a rerun resumes it)."""
    key = f"{Path(input_path).resolve()}\0{Path(output_path).resolve()}"
    return hashlib.sha256(key.encode()).hexdigest()[:12]


def job_id_for(batch_id: str, custom_id: str) -> str:
    """A readable, deterministic job id, distinct for distinct custom_ids of one batch."""
    if _SAFE_ID.match(custom_id):
        return f"b-{batch_id}-{custom_id}"
    digest = hashlib.sha256(custom_id.encode()).hexdigest()[:16]
    readable = _UNSAFE.sub("_", custom_id)[:40].strip("_") or "id"
    return f"b-{batch_id}:{readable}:{digest}"


class BatchRunner:
    #: a blocked wait this long without results triggers a look at the job store
    SWEEP_AFTER_S = 10.0
    #: a paused run tries the refused line again after this long when the refusal names no time
    REFUSED_RETRY_S = 5.0

    def __init__(
        self, client: Client, batch_id: str, output: Path, errors: Path, window: int, progress: BatchProgress
    ) -> None:
        self.client = client
        self.redis = client.redis
        self.window = window
        self.progress = progress
        self.summary = BatchSummary(batch_id, output, errors)
        self.counters = BatchCounters()
        self.reply_to = f"llmq:reply:batch-{batch_id}"
        #: job id -> (custom_id, input line); never more than ``window`` entries
        self.in_flight: dict[str, tuple[str, int]] = {}
        self.stop_requested = False
        #: True once jobs may have been enqueued (before that, Ctrl-C can simply abort)
        self.submitting = False
        self._exhausted = False
        self._stall_s: float | None = None
        self._last_result = time.monotonic()
        self._last_sweep = time.monotonic()
        self._out: JsonlAppender | None = None
        self._err: JsonlAppender | None = None

    # --- the two passes -----------------------------------------------------------------------

    def run(
        self,
        input_path: Path,
        model: str | None,
        skip_invalid: bool,
        tenant: str | None,
        stall_s: float | None,
        priority: str = "bulk",
        via: Via = "queue",
        deadline_s: float | None = None,
    ) -> BatchSummary:
        started = time.monotonic()
        s = self.summary
        resume = read_outputs(s.output, s.errors)
        self._stall_s = stall_s
        # with skip_invalid, invalid lines are written during validation; otherwise an invalid
        # file must leave no trace, so nothing is opened before it validated
        self._err = JsonlAppender(s.errors) if skip_invalid else None
        try:
            report = validate_file(
                input_path,
                model=model,
                done=resume.done,
                failed=resume.failed_ids,
                on_invalid=self._invalid_writer(resume, skip_invalid),
                check=self._producer_checks,
            )
            s.lines, s.valid, s.invalid = report.lines, report.valid, report.invalid_count
            if report.invalid_count and not skip_invalid:
                raise BatchValidationError(report)
            c = self.counters
            c.todo, c.invalid = report.todo, report.invalid_count
            c.resumed = s.resumed = report.valid - report.todo
            s.earlier_failed = report.earlier_failed
            if resume.repaired_bytes:
                self.progress.message(f"llmq batch: cut a torn last line ({resume.repaired_bytes} bytes) off")
            self._out = JsonlAppender(s.output)
            if self._err is None:
                self._err = JsonlAppender(s.errors)
            self._last_result = self._last_sweep = time.monotonic()
            self.submitting = True
            self._submit_all(input_path, model, tenant, resume, report.invalid_lines, priority, via, deadline_s)
            self._drain()
        finally:
            s.left_in_flight = len(self.in_flight)
            s.elapsed_s = time.monotonic() - started
            for appender in (self._out, self._err):
                if appender is not None:
                    appender.close()
        s.interrupted = self.stop_requested and not s.stalled and not (self._exhausted and not self.in_flight)
        self.progress.finish(self.counters, interrupted=not s.complete, extra=self._finish_note())
        return s

    def _producer_checks(self, parsed: ParsedLine) -> list[LineIssue]:
        """What ``Client.submit`` would refuse (model names, prompt variables, unknown worker tools), for
        pass one; the model names of every line (cheap: the workers' catalog is cached), the rest only
        for lines that use a prompt or tools."""
        try:
            if parsed.job.prompt is None and not parsed.job.tools:
                self.client.check_models(parsed.job)
                return []
            job = parsed.job.model_copy(update={"id": job_id_for(self.summary.batch_id, parsed.custom_id)})
            self.client.validate(job)
        except InvalidJobError as exc:
            return [job_issue(parsed.line, parsed.custom_id, exc)]
        return []

    def _invalid_writer(self, resume: ResumeState, skip_invalid: bool) -> Callable[[list[LineIssue]], None] | None:
        if not skip_invalid:
            return None

        def write(issues: list[LineIssue]) -> None:
            if issues[0].line not in resume.invalid_lines:
                assert self._err is not None
                self._err.write(invalid_record(issues))

        return write

    def _submit_all(
        self,
        input_path: Path,
        model: str | None,
        tenant: str | None,
        resume: ResumeState,
        invalid: set[int],
        priority: str,
        via: Via = "queue",
        deadline_s: float | None = None,
    ) -> None:
        s = self.summary
        for number, raw in iter_lines(input_path):
            if self.stop_requested:
                return
            if number in invalid:
                continue
            try:
                parsed = parse_line(raw, number, default_model=model)
            except LineError as exc:  # the file changed since it was validated
                assert self._err is not None
                self._err.write(invalid_record(exc.issues))
                continue
            if parsed.custom_id in resume.done:
                continue
            job = parsed.job
            job.id = job_id_for(s.batch_id, parsed.custom_id)
            job.reply_to = self.reply_to
            job.stream = False
            job.metadata["batch_id"] = s.batch_id
            job.metadata["line"] = str(number)
            if tenant:
                job.tenant = tenant
            if "priority" not in job.model_fields_set:  # the line's own class wins
                job.priority = priority  # type: ignore[assignment]  # checked by the client's validation
            if "batch" not in job.model_fields_set:  # the line's own choice wins
                job.batch = VIA_BATCH[via]
            if deadline_s is not None and job.deadline_s is None:
                job.deadline_s = deadline_s
            try:
                enqueued = self._submit_or_pause(job, number)
            except InvalidJobError as exc:  # checked in pass one; a label may have moved since
                assert self._err is not None
                s.invalid += 1
                self._err.write(invalid_record([job_issue(number, parsed.custom_id, exc)]))
                continue
            if enqueued is None:
                return  # stopped while paused: this line was not sent, a rerun sends it
            s.submitted += 1
            self.in_flight[job.id] = (parsed.custom_id, number)
            s.max_in_flight = max(s.max_in_flight, len(self.in_flight))
            if not enqueued:
                s.reused += 1
            if len(self.in_flight) >= self.window:
                while len(self.in_flight) >= self.window and not self.stop_requested:
                    self._collect(block=True)
                    self._tick()
            elif s.submitted % 16 == 0:
                self._collect(block=False)
            self._tick()
        self._exhausted = True

    def _submit_or_pause(self, job: CompletionJob, line: int) -> bool | None:
        """Submit ``job`` (an id an earlier run submitted is resumed instead); whether it was enqueued.

        While the queue refuses it (:class:`SubmitRefusedError`: Redis full ...) the run pauses on
        this line: it keeps collecting results, tries the same line again after the refusal's
        ``retry_after_s``, and goes on from there, so no line is skipped or sent twice. None when
        it was stopped (Ctrl-C) while paused.
        """
        paused_at: float | None = None
        while True:
            try:
                handle = self.client.submit(job)
                if not handle.enqueued:
                    self._resume_job(job)
            except SubmitRefusedError as exc:
                if paused_at is None:
                    paused_at = time.monotonic()
                    self.summary.pauses += 1
                    self.progress.message(f"llmq batch: paused at line {line}: {exc}")
                self._wait(exc.retry_after_s if exc.retry_after_s is not None else self.REFUSED_RETRY_S)
                if self.stop_requested:  # the summary counts the pause it was stopped in too
                    self.summary.paused_s += time.monotonic() - paused_at
                    return None
                continue
            if paused_at is not None:
                waited = time.monotonic() - paused_at
                self.summary.paused_s += waited
                self.progress.message(f"llmq batch: resumed at line {line} after {waited:.0f}s")
            return handle.enqueued

    def _wait(self, seconds: float) -> None:
        """Collect results for ``seconds`` (or until stopped): a paused run still writes what ends."""
        until = time.monotonic() + seconds
        while not self.stop_requested and time.monotonic() < until:
            self._collect(block=True)
            self._tick()

    def _resume_job(self, job: CompletionJob) -> None:
        """A job an earlier run submitted: take its stored result, or make sure it will run.

        ``Client.submit`` registers the id before it sends the message, so a run killed between
        the two leaves an id that is registered but never queued. A job no worker has claimed
        yet (no ``runs`` in its meta) is therefore sent again under the same id: if the first
        message does exist, the worker's claim runs the job once and skips the other copy.
        """
        existing = self.client.get_result(job.id)
        if existing is not None:
            self._deliver(existing)
            return
        keys = JobKeys(job.id)
        if self.redis.hexists(keys.meta, "runs") or self.redis.exists(keys.batch):
            return  # claimed by a worker, or in the provider batch lane: its result will come to the reply list
        job.submitted_at = job.submitted_at or time.time()
        self.client.dispatch(job)  # a Redis at maxmemory refusing it pauses the run (_submit_or_pause)
        self.summary.resent += 1

    def _drain(self) -> None:
        while self.in_flight and not self.stop_requested:
            self._collect(block=True)
            self._tick()

    # --- results --------------------------------------------------------------------------------

    def _collect(self, *, block: bool) -> None:
        raw: list[bytes | str] = []
        if block:
            got = self.redis.blpop([self.reply_to], timeout=1)
            if got is not None:
                raw.append(got[1])
        more = self.redis.lpop(self.reply_to, 500)
        if isinstance(more, list):  # with a count: a list, or None when empty
            raw.extend(more)
        for item in raw:
            try:
                result = CompletionResult.model_validate_json(item)
            except ValidationError:
                continue  # not ours to interpret; never block the batch on it
            self._deliver(result)
        if block and not raw and self.in_flight:
            self._idle()

    def _idle(self) -> None:
        now = time.monotonic()
        if now - max(self._last_result, self._last_sweep) > self.SWEEP_AFTER_S:
            self._sweep()
        if self._stall_s is not None and now - self._last_result > self._stall_s and self.in_flight:
            self.summary.stalled = True
            self.stop_requested = True
            self.progress.message(
                f"llmq batch: no result for {self._stall_s:.0f}s; {len(self.in_flight)} job(s) still pending, "
                "e.g. " + ", ".join(list(self.in_flight)[:3])
            )

    def _sweep(self) -> None:
        """Look in the job store for results whose notification we missed."""
        self._last_sweep = time.monotonic()
        ids = list(self.in_flight)
        stored = self.redis.mget([JobKeys(job_id).result for job_id in ids])
        for raw in stored:
            if raw:
                self._deliver(CompletionResult.model_validate_json(raw))

    def _deliver(self, result: CompletionResult) -> None:
        entry = self.in_flight.pop(result.id, None)
        if entry is None:
            return  # a duplicate notification, or one from an earlier run for a line not sent yet
        self._last_result = time.monotonic()
        custom_id, line = entry
        ok, record = result_record(result, custom_id, line)
        target = self._out if ok else self._err
        assert target is not None
        target.write(record)
        s, c = self.summary, self.counters
        if ok:
            s.succeeded += 1
        else:
            s.failed += 1
        s.prompt_tokens += result.usage.prompt_tokens
        s.completion_tokens += result.usage.completion_tokens
        s.cost_usd += result.cost_usd or 0.0
        c.succeeded, c.failed = s.succeeded, s.failed
        c.prompt_tokens, c.completion_tokens, c.cost_usd = s.prompt_tokens, s.completion_tokens, s.cost_usd

    def _tick(self) -> None:
        self.counters.in_flight = len(self.in_flight)
        self.progress.update(self.counters)

    def _finish_note(self) -> str:
        s = self.summary
        note = f"\n  output: {s.output}  errors: {s.errors}  batch id: {s.batch_id}"
        if s.earlier_failed:
            note += (
                f"\n  {s.earlier_failed} line(s) failed in an earlier run (in {s.errors}) and are not run again; "
                "to retry them, take their records out of that file and rerun with a new --batch-id "
                "(this batch's jobs keep their results)"
            )
        if s.reused:
            note += f"\n  {s.reused} job(s) from an earlier run were picked up, not sent again ({s.resent} re-queued)"
        if s.pauses:
            note += f"\n  paused {s.pauses} time(s), {s.paused_s:.0f}s in all, while the queue refused new jobs"
        if not s.complete:
            note += (
                f"\n  {s.left_in_flight} job(s) were still in flight and keep running on the workers; "
                "rerun the same command to collect them and continue"
            )
        return note

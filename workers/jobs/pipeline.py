"""The per-job flow: claim -> prepare -> call the model chain -> publish -> store the result.

Every job ends with exactly one terminal event (``done``, ``error`` or ``cancelled``) and a stored
:class:`CompletionResult`, whatever goes wrong, so no consumer ever waits on a job that silently
died. Retries and fallback happen inside the model chain and only before the first delta is
published; a failure after that is a terminal ``error`` (no duplicated text).
"""

from __future__ import annotations

import dataclasses
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import redis
from opentelemetry.trace import use_span
from pydantic import TypeAdapter

from workers.accounting.metered import Meter, MeteredModel
from workers.contract import (
    Attempt,
    CancelledEvent,
    CompletionJob,
    CompletionResult,
    DoneEvent,
    ErrorEvent,
    ErrorInfo,
    JobKeys,
    JsonObjectFormat,
    JsonSchemaFormat,
    Message,
    RepairEvent,
    StartEvent,
    StreamEvent,
    Timings,
    ToolCallEvent,
    Usage,
    UsageEvent,
)
from workers.contract.capabilities import problems as capability_problems
from workers.jobs import structured
from workers.jobs.chain import build_chain, resolve_chain
from workers.jobs.events import EventPublisher, last_seq
from workers.jobs.observe import JobObserver
from workers.jobs.spans import instrumentation, start_job_span
from workers.jobs.store import ClaimOutcome
from workers.llm.abort import AbortSignal
from workers.llm.base import ChatStream, Completion
from workers.llm.errors import (
    BadRequestError,
    DeadlineExceededError,
    JobCancelledError,
    LLMQError,
    MidStreamError,
    RequeueLimitError,
    RetryLaterError,
    error_type_name,
)
from workers.llm.model import ChatModel, ModelRequest, RunContext
from workers.prompts.render import render_messages
from workers.runtime.resources import WorkerResources

__all__ = ["JobOutcome", "JobRunner"]

log = logging.getLogger("llmq.pipeline")
_ATTEMPTS: TypeAdapter[list[Attempt]] = TypeAdapter(list[Attempt])


@dataclass
class JobOutcome:
    """What the task does next: nothing (result stored), or re-queue after ``requeue_after_s``."""

    result: CompletionResult | None = None
    requeue_after_s: float | None = None
    skipped: str | None = None
    requeue_reason: str | None = None


@dataclass
class _Run:
    job: CompletionJob
    keys: JobKeys
    publisher: EventPublisher
    ctx: RunContext
    started_wall: float
    started: float
    model_used: str | None = None
    ttft_s: float | None = None
    text_parts: list[str] = field(default_factory=list)
    token: str = ""
    cancelled_at_start: bool = False
    meter: Meter | None = None
    parsed: object = None
    repairs: int = 0


class JobRunner:
    """Runs jobs with the process's shared resources. Thread- and greenlet-safe per job."""

    def __init__(self, resources: WorkerResources, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.res = resources
        self._clock = clock

    # --- entry point ----------------------------------------------------------------------------

    def run(self, job: CompletionJob) -> JobOutcome:
        res = self.res
        keys = JobKeys(job.id)
        token = uuid.uuid4().hex
        claim = res.store.claim(keys, token)
        if claim.run == ClaimOutcome.DONE:
            return JobOutcome(result=res.store.load_result(keys), skipped="already finished")
        if claim.run == ClaimOutcome.BUSY:
            return JobOutcome(skipped="running on another worker")
        settings = res.settings
        publisher = EventPublisher(
            res.redis,
            keys,
            run=claim.run,
            start_seq=claim.last_seq,
            coalesce_s=settings.coalesce_ms / 1000.0,
            coalesce_chars=settings.coalesce_chars,
            maxlen=settings.events_maxlen,
            ttl_s=settings.result_ttl_s,
            claim_lease_ms=res.store.claim_lease_ms,
            publish_deltas=job.stream,
        )
        ctx = RunContext(
            attempts=_ATTEMPTS.validate_json(claim.attempts_json) if claim.attempts_json else [],
            sleep=lambda s: self._sleep(keys, s),
            clock=self._clock,
            deadline=self._deadline(job),
            max_inworker_wait_s=res.config.max_inworker_wait_s,
        )
        # call numbers continue across re-queues, so the ledger settles each call exactly once
        ctx.calls = sum(1 for a in ctx.attempts if a.status != "skipped")
        run = _Run(job, keys, publisher, ctx, started_wall=time.time(), started=self._clock(), token=token)
        run.cancelled_at_start = claim.cancelled
        span = start_job_span(res.tracer, job, settings.queue, claim.run, res.redis, keys)
        observer = ctx.hooks = JobObserver(
            job, span, metrics=res.metrics.decisions, sample=settings.log_sample, slow_s=settings.log_slow_s
        )
        ctx.tracer = res.tracer
        try:
            with use_span(span, end_on_exit=True, record_exception=False, set_status_on_exception=False):
                outcome = self._execute(run)
                if outcome.result is not None:
                    res.metrics.jobs.record(outcome.result)
                    observer.finished(outcome.result)
                elif outcome.requeue_after_s is not None:
                    observer.requeued(outcome.requeue_reason or "unknown", outcome.requeue_after_s)
            return outcome
        finally:
            if run.token:  # not released with the terminal write (re-queued, or that write failed)
                res.store.release(keys, run.token)
            if res.cancel_watcher is not None:
                res.cancel_watcher.unregister(job.id)

    def reject_invalid(self, job_id: object, exc: Exception) -> None:
        """End a job whose payload failed validation on the worker (stored result + error event)."""
        if not isinstance(job_id, str) or not job_id:
            return  # nothing to address the result to; the task logs it
        try:
            keys = JobKeys(job_id)
        except ValueError:
            return
        job = CompletionJob.model_construct(id=job_id, model="invalid", stream=True, tenant="default", metadata={})
        publisher = EventPublisher(self.res.redis, keys, run=1, start_seq=last_seq(self.res.redis, keys))
        run = _Run(job, keys, publisher, RunContext(), started_wall=time.time(), started=self._clock())
        self._finish_failed(run, BadRequestError(f"invalid job payload: {exc}"[:2000]))

    # --- the flow -------------------------------------------------------------------------------

    def _execute(self, run: _Run) -> JobOutcome:
        job = run.job
        try:
            if run.cancelled_at_start:
                raise JobCancelledError("cancelled before it started")
            remaining = run.ctx.remaining()
            if remaining is not None and remaining <= 0:
                raise DeadlineExceededError("the job's deadline passed while it was queued")
            chain = resolve_chain(job, self.res.config, self.res.settings.default_model)
            _check_capabilities(job, chain)
            meter = run.meter = Meter(
                job, self.res.counter, self.res.prices, self.res.ledger, run.ctx, self.res.metrics.usage
            )
            model = build_chain(
                chain,
                self.res.registry,
                self.res.config,
                run.ctx,
                meter=lambda m: MeteredModel(m, meter),
                guards=self.res.guards,
                instrument=instrumentation(job, self.res.prices, self.res.settings.trace_content),
            )
            request = ModelRequest(
                messages=render_messages(job),
                max_tokens=job.max_tokens,
                tools=job.tools,
                temperature=job.temperature,
                headers={"x-llmq-job-id": job.id},
                # a whole-body call has no stream to close: a cancel aborts it through this
                abort=None if job.stream else AbortSignal(),
                response_format=job.response_format,
                tool_choice=job.tool_choice,
                parallel_tool_calls=job.parallel_tool_calls,
                stop=job.stop,
                top_p=job.top_p,
                seed=job.seed,
                user=job.user,
                reasoning=job.reasoning,
            )
            run.publisher.emit(StartEvent(job_id=job.id, seq=0, model=chain[0]))
            completion = self._call(run, model, request)
            if isinstance(job.response_format, JsonObjectFormat | JsonSchemaFormat):
                completion = self._structured(run, model, request, completion)
        except RetryLaterError as exc:
            return self._requeue(run, exc)
        except JobCancelledError as exc:
            return JobOutcome(result=self._finish_cancelled(run, exc))
        except LLMQError as exc:
            return JobOutcome(result=self._finish_failed(run, exc))
        except Exception as exc:  # a bug must still end the job, never hang its consumers
            log.exception("job %s failed with an internal error", job.id)
            internal = LLMQError(f"internal error: {type(exc).__name__}: {exc}")
            return JobOutcome(result=self._finish_failed(run, internal))
        return JobOutcome(result=self._finish_succeeded(run, completion))

    def _structured(self, run: _Run, model: ChatModel, request: ModelRequest, completion: Completion) -> Completion:
        """Validate the answer against ``response_format``; repair turns go through the whole chain."""

        def repair(turn: int, errors: list[str]) -> None:
            run.publisher.emit(RepairEvent(job_id=run.job.id, seq=0, attempt=turn, errors=errors))
            run.text_parts = []
            run.ctx.committed = False  # a new turn: its own retries and fallback before its first delta
            if run.meter is not None:
                run.meter.new_turn()

        def call(messages: list[Message]) -> Completion:
            turn = self._call(run, model, dataclasses.replace(request, messages=messages))
            run.text_parts = [turn.text]  # an invalid last answer is kept in the failed result
            return turn

        run.text_parts = [completion.text]
        outcome = structured.enforce(run.job, request.messages, completion, call, repair)
        run.parsed, run.repairs = outcome.parsed, outcome.repairs
        return outcome.completion

    def _call(self, run: _Run, model: ChatModel, request: ModelRequest) -> Completion:
        watcher = self.res.cancel_watcher
        if not run.job.stream:
            if watcher is not None and request.abort is not None:
                watcher.register(run.job.id, request.abort.fire)
            completion = model.complete(request)
            run.model_used = getattr(model, "model_id", None)
            return completion
        stream = model.stream(request)
        publisher = run.publisher
        if watcher is not None:
            watcher.register(run.job.id, stream.close)
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
        except JobCancelledError:
            _abort(stream, deltas)
            raise
        except LLMQError as exc:
            _abort(stream, deltas)
            if publisher.cancelled or self.res.store.is_cancelled(run.keys):
                raise JobCancelledError("cancelled while streaming") from exc
            if run.ttft_s is not None:
                raise MidStreamError(
                    f"{error_type_name(exc)} after the first delta: {exc.message}",
                    exc.provider,
                    exc.model,
                    exc.status,
                    error_type_name(exc),
                ) from exc
            raise
        publisher.flush()
        run.model_used = getattr(stream, "model_id", None)
        return stream.to_completion()

    # --- endings ------------------------------------------------------------------------------------

    def _base_result(self, run: _Run, status: str) -> CompletionResult:
        job = run.job
        queued = max(0.0, run.started_wall - job.submitted_at) if job.submitted_at else None
        meter = run.meter
        return CompletionResult(
            usage=(meter.last_usage if meter and meter.last_usage else Usage()),
            cost_usd=float(meter.cost_usd) if meter and meter.cost_usd is not None else None,
            truncated_messages=meter.dropped if meter else 0,
            id=job.id,
            status=status,  # type: ignore[arg-type]
            attempts=run.ctx.attempts,
            tenant=job.tenant,
            metadata=job.metadata,
            model_used=run.model_used,
            timings=Timings(
                queued_s=round(queued, 4) if queued is not None else None,
                ttft_s=round(run.ttft_s, 4) if run.ttft_s is not None else None,
                total_s=round(self._clock() - run.started, 4),
            ),
        )

    def _finish_succeeded(self, run: _Run, completion: Completion) -> CompletionResult:
        job = run.job
        # the metering wrapper always sets usage: the provider's, or our labelled estimate
        usage = completion.usage or Usage(estimated=True)
        result = self._base_result(run, "succeeded")
        result.content = completion.text
        result.tool_calls = completion.tool_calls
        result.finish_reason = completion.finish_reason
        result.usage = usage
        result.parsed, result.repairs, result.refusal = run.parsed, run.repairs, completion.refusal  # type: ignore[assignment]
        events: list[StreamEvent] = [ToolCallEvent(job_id=job.id, seq=0, tool_call=c) for c in completion.tool_calls]
        events.append(UsageEvent(job_id=job.id, seq=0, usage=usage))
        self._terminal(run, DoneEvent(job_id=job.id, seq=0, result=result), result, before=events)
        return result

    def _finish_failed(self, run: _Run, exc: LLMQError) -> CompletionResult:
        result = self._base_result(run, "failed")
        info = exc.to_info()
        result.content = "".join(run.text_parts)
        result.error = info
        self._terminal(run, ErrorEvent(job_id=run.job.id, seq=0, error=info, result=result), result)
        return result

    def _finish_cancelled(self, run: _Run, exc: JobCancelledError) -> CompletionResult:
        result = self._base_result(run, "cancelled")
        result.content = "".join(run.text_parts)
        result.error = ErrorInfo(type="cancelled", message=exc.message or "cancelled")
        self._terminal(run, CancelledEvent(job_id=run.job.id, seq=0, result=result), result)
        return result

    def _terminal(
        self,
        run: _Run,
        event: DoneEvent | ErrorEvent | CancelledEvent,
        result: CompletionResult,
        before: list[StreamEvent] | None = None,
    ) -> None:
        """Publish the last events and store the result in one round trip (result first)."""
        store = self.res.store
        reply_to = run.job.reply_to

        def persist(pipe: redis.client.Pipeline) -> None:
            store.store_result(pipe, run.keys, result)
            if reply_to:
                store.notify(pipe, reply_to, result)
            if run.token:
                store.release(run.keys, run.token, pipe)

        run.publisher.refresh_ttl()
        run.publisher.emit_many([*(before or []), event], extra=persist)
        run.token = ""  # released in that same round trip

    def _requeue(self, run: _Run, exc: RetryLaterError) -> JobOutcome:
        limit = self.res.config.max_requeues
        if self.res.redis.hincrby(run.keys.meta, "requeues", 1) > limit:
            final = RequeueLimitError(
                f"gave up after {limit} re-queues (max_requeues); the last: {exc.message}",
                exc.provider,
                exc.model,
                exc.status,
                exc.code,
            )
            return JobOutcome(result=self._finish_failed(run, final))
        attempts = _ATTEMPTS.dump_json(run.ctx.attempts)
        self.res.redis.hset(run.keys.meta, mapping={"state": "queued", "attempts": attempts})
        return JobOutcome(requeue_after_s=exc.retry_after or 1.0, requeue_reason=exc.code or error_type_name(exc))

    # --- helpers --------------------------------------------------------------------------------------

    def _deadline(self, job: CompletionJob) -> float | None:
        if job.deadline_s is None:
            return None
        submitted = job.submitted_at or time.time()
        return self._clock() + (submitted + job.deadline_s - time.time())

    def _sleep(self, keys: JobKeys, seconds: float) -> None:
        """Sleep between attempts, waking up early when the job is cancelled."""
        end = self._clock() + seconds
        while True:
            left = end - self._clock()
            if left <= 0:
                return
            time.sleep(min(left, 0.25))
            if self.res.store.is_cancelled(keys):
                raise JobCancelledError("cancelled while waiting to retry")


def _check_capabilities(job: CompletionJob, chain: list[str]) -> None:
    """The contract's capability table again, now that route aliases are resolved."""
    for model_id in chain:
        found = capability_problems(job, model_id)
        if found:
            raise BadRequestError(str(found[0]), found[0].provider, model_id, code="unsupported_parameter")


def _abort(stream: ChatStream, deltas: Iterator[str]) -> None:
    """Stop a stream now: close the generator chain (wrappers settle what was used) and the response."""
    close = getattr(deltas, "close", None)
    if close is not None:
        close()
    stream.close()

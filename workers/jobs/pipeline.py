"""The per-job flow: claim -> prepare -> take the model turns -> end the job.

Every job ends with exactly one terminal event (``done``, ``error`` or ``cancelled``) and a stored
:class:`CompletionResult`, whatever goes wrong, so no consumer ever waits on a job that silently
died. Two exceptions, both of which leave the job to a run that will end it: a run that lost its
claim (fenced: the job moved to another run) stops without writing, and a run that lost Redis
(restart, fail-over) waits for it with backoff and runs the job again from the start.

The pipeline composes, each below it: the run's shared state (``run.py``), one model turn through
the chain (``turn.py``: retries and fallback only before the first delta is published, a failure
after it is a terminal ``error``), the tool loop (``toolloop.py``), the structured-output repair
(``structured.py``) and the ending (``ending.py``).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import redis
from opentelemetry.trace import use_span
from pydantic import TypeAdapter

from workers.accounting.ledger import LedgerUnavailableError
from workers.accounting.metered import Meter, MeteredModel
from workers.connections.oom import refused_for_memory
from workers.contract import (
    Attempt,
    CompletionJob,
    CompletionResult,
    JobKeys,
    JsonObjectFormat,
    JsonSchemaFormat,
    Message,
    StartEvent,
)
from workers.contract.providers import ProviderInfo, provider_infos
from workers.jobs import structured
from workers.jobs.batched import BatchLane, model_discounts
from workers.jobs.batchrun import batch_step, discard_line
from workers.jobs.batchstate import BatchStore
from workers.jobs.cachedrun import CachedRun, Served
from workers.jobs.cachekey import cache_key, cache_spec
from workers.jobs.chain import build_chain, resolve_chain
from workers.jobs.ending import Endings
from workers.jobs.events import ClaimMissedError, EventPublisher, last_seq
from workers.jobs.fullwait import WriteWait
from workers.jobs.observe import JobObserver
from workers.jobs.resources import JobResources
from workers.jobs.run import JobRun
from workers.jobs.singleflight import Follower
from workers.jobs.spans import instrumentation, start_job_span
from workers.jobs.store import Claim, ClaimOutcome
from workers.jobs.toolloop import ToolLoop
from workers.jobs.turn import Turns
from workers.llm.abort import AbortSignal
from workers.llm.base import ChatRequest, Completion
from workers.llm.errors import (
    BadRequestError,
    DeadlineExceededError,
    InternalError,
    JobCancelledError,
    LLMQError,
    RequeueLimitError,
    RetryLaterError,
    RunFencedError,
    error_type_name,
    must_propagate,
)
from workers.llm.model import RunContext
from workers.prompts.render import render_job

__all__ = ["JobOutcome", "JobRunner"]

log = logging.getLogger("llmq.pipeline")
#: Redis went away (restart, fail-over, network): the run waits for it and starts again.
#: A demoted master refuses writes (ReadOnlyError) until the client follows the fail-over.
REDIS_DOWN: tuple[type[Exception], ...] = (
    redis.ConnectionError,
    redis.TimeoutError,
    redis.BusyLoadingError,
    redis.ReadOnlyError,
)
_ATTEMPTS: TypeAdapter[list[Attempt]] = TypeAdapter(list[Attempt])
#: Response formats whose answer is checked, and repaired by more turns (``workers/jobs/structured.py``).
_CHECKED = (JsonObjectFormat, JsonSchemaFormat)


@dataclass
class JobOutcome:
    """What the task does next: nothing (result stored), or re-queue after ``requeue_after_s``."""

    result: CompletionResult | None = None
    requeue_after_s: float | None = None
    skipped: str | None = None
    requeue_reason: str | None = None
    #: The worker is shutting down and stopped this run: its message goes back to the queue.
    handed_back: bool = False
    #: Redis refuses writes (full at ``maxmemory``) and this run paid nothing: the job goes back to
    #: the queue without a write (its message is left unacknowledged and restored once Redis takes
    #: writes; ``workers/jobs/fullwait.py``), holding no slot meanwhile.
    left_for_restore: bool = False


class JobRunner:
    """Runs jobs with the process's shared resources. Thread- and greenlet-safe per job."""

    def __init__(
        self,
        resources: JobResources,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.res = resources
        self._clock = clock
        self._sleep_for = sleep
        self._running: dict[str, JobRun] = {}
        self._running_lock = threading.Lock()
        self._taking = True
        self._endings = Endings(resources.store, clock)
        self._full = WriteWait(resources.redis, registry=getattr(resources.metrics, "registry", None), sleep=sleep)
        #: The named providers' types and accepted parameters, for the capability check.
        self._providers = provider_infos(resources.config.providers)
        #: Jobs that may wait go to provider batches (``workers/jobs/batched.py``).
        self._lane = BatchLane(
            BatchStore(resources.redis),
            resources.registry,
            resources.config.batch,
            resources.ledger,
            resources.prices,
            keep_s=resources.settings.result_ttl_s,
            model_discounts=model_discounts(resources.config),
        )

    # --- entry point ----------------------------------------------------------------------------

    def run(self, job: CompletionJob, *, first_delivery: bool = False) -> JobOutcome:
        """Run ``job`` to its end. A lost Redis is waited for (backoff, up to ``redis_outage_s``)
        and the job runs again under the same claim token; past that the error propagates.

        ``first_delivery``: the job's message was never delivered before (not redelivered, not a
        re-queue), so the job is most likely untouched: its claim is then taken by its first event
        flush rather than by a round trip of its own (:meth:`_run_once`)."""
        if not self._taking:
            # the worker is shutting down: the job goes back to the queue as it came, unclaimed
            log.info("job %s: handed back before it started, the worker is shutting down", job.id)
            return JobOutcome(handed_back=True)
        token = uuid.uuid4().hex
        waited = 0.0
        delay = 0.25
        claim_first = first_delivery
        while True:
            try:
                return self._run_once(job, token, claim_first=claim_first)
            except ClaimMissedError:
                claim_first = False  # run before, claimed, cancelled or ended: the ordinary claim decides
            except redis.ResponseError as exc:
                if not refused_for_memory(exc):
                    raise
                # nothing paid (its claim, start or first reservation refused), or the worker stops
                budget = self.res.settings.redis_full_wait_s
                if self._taking and self._full.wait("job", budget_s=budget, stop=lambda: not self._taking):
                    continue  # Redis takes writes again: run now
                log.warning(
                    "job %s: Redis refuses writes (full at maxmemory); the job goes back to the queue to wait", job.id
                )
                return JobOutcome(skipped="Redis is full", left_for_restore=True)
            except REDIS_DOWN as exc:
                limit = self.res.settings.redis_outage_s
                if waited >= limit:
                    log.error("job %s: Redis unavailable for %.0f s, giving up this delivery: %s", job.id, waited, exc)
                    raise
                log.warning(
                    "job %s: lost Redis (%s: %s); waiting for it, then running again", job.id, type(exc).__name__, exc
                )
                waited += self._wait_for_redis(delay, limit - waited)
                delay = min(delay * 2, 5.0)
                keeper = self.res.ledger.keeper
                if keeper is not None:  # before the run again reserves: what it paid is settled first
                    keeper.flush()

    def _wait_for_redis(self, delay: float, budget: float) -> float:
        """Sleep with backoff until Redis answers PING (or ``budget`` seconds passed); returns the time slept."""
        slept = 0.0
        while True:
            pause = min(delay, max(0.0, budget - slept))
            self._sleep_for(pause)
            slept += pause
            try:
                if self.res.redis.ping():
                    return slept
            except REDIS_DOWN:
                pass
            if slept >= budget:
                return slept
            delay = min(delay * 2, 5.0)

    def _run_once(self, job: CompletionJob, token: str, *, claim_first: bool = False) -> JobOutcome:
        """One run. Its claim (``workers/jobs/store.py``) is taken first, in a round trip of its own
        (with the response cache's lookup for a job that asks to be cached), or, with ``claim_first``
        (a first delivery of a job that is neither cached nor in a provider batch), by the run's
        first event flush, its start or its ending, in the same script (``workers/jobs/events.py``).
        That flush takes it only if the job is as no run left it, so what a claim would have
        answered then is known beforehand (run 1, no events, no attempts, not cancelled), and the
        run numbers its events with it; else it writes nothing and the run starts again with the
        ordinary claim (:class:`ClaimMissedError`). Until that flush the run only reads and
        computes (chain, capabilities, rendering): no event, reservation, call or charge is made
        without the claim, and the heartbeat holds the claim from the moment it is taken."""
        res = self.res
        keys = JobKeys(job.id)
        cached = self._cache_probe(job)
        if claim_first and cached is None and job.batch is None:
            claim = Claim(1)
        elif cached is None:
            claim_first = False
            claim = res.store.claim(keys, token)
        else:  # the cache lookup rides along with the claim: a miss costs no extra round trip
            claim_first = False
            claim, reply = res.store.claim_with(keys, token, *cached.cache.begin_call(cached.key, job.id))
            cached.first = cached.cache.parse_begin(reply)
            if cached.first.kind == "lead":
                cached.leading = True
            if claim.run == ClaimOutcome.DONE:
                cached.end(None)  # not this run's to lead
            elif claim.run == ClaimOutcome.BUSY:  # a live run of this job leads (or will): its lead stays
                cached.leading = False
        if claim.run == ClaimOutcome.DONE:
            return JobOutcome(result=res.store.load_result(keys), skipped="already finished")
        if claim.run == ClaimOutcome.BUSY:
            # another run holds the claim (a duplicate delivery): try again once its lease could
            # have lapsed, so the job is not dropped if that run dies
            return JobOutcome(skipped="running on another worker", requeue_after_s=float(res.settings.claim_lease_s))
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
            token=token,
            publish_deltas=job.stream,
            flusher=res.flusher,
            claim_first=claim_first,
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
        run = JobRun(job, keys, publisher, ctx, started_wall=time.time(), started=self._clock(), token=token)
        run.cached = cached
        run.cancelled_at_start = claim.cancelled
        # the ending waits for a full Redis for as long as it stays full (the run's result is kept)
        publisher.on_full = lambda: self._full.wait("ending", budget_s=None, stop=lambda: run.handed_back)
        span = start_job_span(res.tracer, job, settings.queue, claim.run)
        observer = ctx.hooks = JobObserver(
            job, span, metrics=res.metrics.decisions, sample=settings.log_sample, slow_s=settings.log_slow_s
        )
        ctx.tracer = res.tracer
        first_run_wait = max(0.0, run.started_wall - job.submitted_at) if job.submitted_at and claim.run == 1 else None
        started = False

        def claimed() -> None:  # the claim is this run's from here on: held by the heartbeat, counted running
            nonlocal started
            if res.heartbeat is not None:
                res.heartbeat.hold(keys, token, lambda: self._fence(run))
            res.metrics.jobs.started(job.priority, first_run_wait)
            started = True

        if claim_first:
            publisher.on_claimed = claimed
        else:
            claimed()
        with self._running_lock:
            self._running[token] = run
        outcome: JobOutcome | None = None
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
            # the callbacks that hold the run (run -> publisher/meter -> callback -> run), unlinked: the
            # run's objects are freed as it ends, not at the next full collection (hundreds of ended
            # jobs' worth by then: the worker's peak memory)
            publisher.on_full = None
            if run.meter is not None:
                run.meter.wait_for_writes = None
            publisher.on_claimed = None
            if run.cached is not None:  # a lead its terminal write did not end
                run.cached.end(outcome.result if outcome is not None else None)
            if started:
                res.metrics.jobs.ended(job.priority)
            with self._running_lock:
                self._running.pop(token, None)
            if res.heartbeat is not None:
                res.heartbeat.drop(token)
            if res.cancel_watcher is not None:
                res.cancel_watcher.unregister(job.id)
            # not released with the terminal write (re-queued, fenced, or that write failed); never taken
            # when the first flush was not made or missed (ClaimMissedError)
            if run.token and not publisher.claim_pending:
                res.store.release(keys, run.token)

    def runs_in_flight(self) -> int:
        """How many runs this process holds now. A run counts until its bookkeeping after the terminal
        write is done too (its metrics and its log line): a caller that saw a job's
        result and waits for this to reach 0 reads metrics and logs that include that job."""
        with self._running_lock:
            return len(self._running)

    def stop_taking_jobs(self) -> None:
        """The worker is shutting down: a job that starts from now on is handed back before it is
        claimed (no event, no run number, no charge), so its task re-queues it for another worker.
        Runs already under way are not affected (see :meth:`hand_back_all`)."""
        self._taking = False

    def hand_back_all(self) -> int:
        """Stop every running job of this process without ending it (graceful shutdown's window ran
        out): each run writes no terminal event, frees its claim, and its task re-queues the job.
        What a stopped call already used is settled as usual. Returns how many runs were stopped."""
        with self._running_lock:
            runs = list(self._running.values())
        for run in runs:
            run.handed_back = True
            abort = run.abort
            if abort is not None:
                try:
                    abort()
                except Exception:
                    log.exception("job %s: stopping it for the shutdown failed", run.job.id)
        return len(runs)

    def _wait_to_reserve(self, run: JobRun, paid: bool) -> bool:
        """A reservation Redis refused at ``maxmemory``: True to reserve again (it takes writes).
        A run that paid nothing yet waits briefly, then its job goes back to the queue; one that
        paid waits for as long as Redis stays full (its result must not be lost)."""
        budget = None if paid else self.res.settings.redis_full_wait_s
        return self._full.wait("reservation", budget_s=budget, stop=lambda: run.handed_back or run.ctx.fenced)

    def _fence(self, run: JobRun) -> None:
        """The claim heartbeat found another run holding the job: stop this one's upstream call."""
        run.ctx.fenced = True
        abort = run.abort
        if abort is not None:
            abort()

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
        run = JobRun(job, keys, publisher, RunContext(), started_wall=time.time(), started=self._clock())
        self._endings.failed(run, BadRequestError(f"invalid job payload: {exc}"[:2000]))

    # --- the flow -------------------------------------------------------------------------------

    def _execute(self, run: JobRun) -> JobOutcome:
        job = run.job
        try:
            if run.cancelled_at_start:
                if job.batch is not None:
                    discard_line(self._lane, self.res, run)
                raise JobCancelledError("cancelled before it started")
            remaining = run.ctx.remaining()
            if remaining is not None and remaining <= 0:
                raise DeadlineExceededError("the job's deadline passed while it was queued")
            chain = resolve_chain(job, self.res.catalog)
            _check_capabilities(job, chain, self._providers)
            rendered = render_job(job, self.res.redis, max_chars=self.res.settings.prompt_max_chars)
            run.prompt = rendered.prompt
            line = self._lane.store.line(job.id) if job.batch is not None else None
            if line is not None and line.state == "new":  # handed to the batch lane, not taken yet
                line = None
            # a job with a batch line started when it was parked (unless the batcher sent it on unstarted)
            if line is None or line.onward:
                run.publisher.emit(StartEvent(job_id=job.id, seq=0, model=chain[0], prompt=run.prompt))
            served = self._from_cache(run, chain, rendered.messages)
            if served is not None:
                return JobOutcome(result=self._endings.served(run, served))
            meter = run.meter = Meter(
                job, self.res.counter, self.res.prices, self.res.ledger, run.ctx, self.res.metrics.usage
            )
            meter.wait_for_writes = lambda paid: self._wait_to_reserve(run, paid)
            request = ChatRequest(
                messages=rendered.messages,
                params=job,  # the job is its own RequestParams: the adapters read them from it
                tools=job.client_tools,
                headers={"x-llmq-job-id": job.id},
                # a whole-body call has no stream to close: a cancel aborts it through this
                abort=None if job.stream else AbortSignal(),
            )
            answered: Completion | None = None
            if job.batch is not None:
                step = batch_step(self._lane, run, chain, line, request, meter)
                if isinstance(step, str):
                    return JobOutcome(skipped=step)
                answered = step
            model = build_chain(
                chain,
                self.res.registry,
                self.res.config,
                run.ctx,
                meter=lambda m: MeteredModel(m, meter),
                guards=self.res.guards,
                instrument=instrumentation(job, self.res.prices, self.res.settings.trace_content),
            )
            turns = Turns(run, model, store=self.res.store, cancel_watcher=self.res.cancel_watcher, clock=self._clock)
            if answered is not None:
                completion = answered
            elif job.worker_tools:
                loop = ToolLoop(self.res, run, turns, request)
                run.tools = loop.state
                completion = loop.run_loop()
            else:  # a job whose answer is checked (structured output) may take repair turns after it
                completion = turns.take(request, last=not isinstance(job.response_format, _CHECKED))
            if isinstance(job.response_format, _CHECKED):
                outcome = structured.enforce(run, turns, request, completion, run.tools)
                completion, run.parsed, run.repairs = outcome.completion, outcome.parsed, outcome.repairs
        except ClaimMissedError:
            raise  # nothing written: run() starts the run again with the ordinary claim
        except RunFencedError as exc:
            return self._fenced(run, exc)
        except LedgerUnavailableError as exc:
            if isinstance(exc.__cause__, REDIS_DOWN):
                raise exc.__cause__ from exc  # Redis is away: wait for it, run again
            if isinstance(exc.__cause__, redis.ResponseError) and refused_for_memory(exc):
                raise exc.__cause__ from exc  # Redis is full and nothing was paid: the job waits in the queue
            return self._end_failed(run, exc)
        except REDIS_DOWN:
            raise
        except redis.ResponseError as exc:
            if refused_for_memory(exc):
                raise  # the job waits (run() decides how)
            log.exception("job %s failed with an internal error", job.id)
            return self._end_failed(run, InternalError(f"internal error: {type(exc).__name__}: {exc}"[:2000]))
        except RetryLaterError as exc:
            return self._requeue(run, exc)
        except JobCancelledError as exc:
            if run.handed_back or run.ctx.fenced:  # our own abort closed the call, not a consumer
                return self._fenced(run, RunFencedError("the call was stopped: the job moved or is handed back"))
            try:
                return JobOutcome(result=self._endings.cancelled(run, exc))
            except RunFencedError as fenced:
                return self._fenced(run, fenced)
        except LLMQError as exc:
            return self._end_failed(run, exc)
        except BaseException as exc:  # a bug (or a native panic) must still end the job, never hang it
            if must_propagate(exc):
                raise
            log.exception("job %s failed with an internal error", job.id)
            internal = InternalError(f"internal error: {type(exc).__name__}: {exc}"[:2000])
            return self._end_failed(run, internal)
        try:
            return JobOutcome(result=self._endings.succeeded(run, completion))
        except RunFencedError as exc:
            return self._fenced(run, exc)

    def _from_cache(self, run: JobRun, chain: list[str], messages: list[Message]) -> Served | None:
        """For a job that asks to be cached: the stored answer, or an identical job's in flight
        (followed, its deltas republished); None when this job calls (``workers/jobs/cachedrun.py``)."""
        cache = self.res.response_cache
        if run.cached is None:  # not looked up with the claim (a published prompt's job): now
            spec = None if cache is None else cache_spec(run.job, self.res.config)
            if cache is None or spec is None:
                return None
            run.cached = CachedRun(cache, cache_key(run.job, spec, chain, messages), run.job.id)
        follower = Follower(
            self.res.redis,
            run.job.id,
            run.publisher,
            cancelled=lambda: self.res.store.is_cancelled(run.keys),
            remaining=run.ctx.remaining,
        )
        return run.cached.begin(follower.follow, lambda: follower.shown)

    def _cache_probe(self, job: CompletionJob) -> CachedRun | None:
        """The cache part of a job that asks to be cached and whose key needs no Redis (messages or a
        template: no published prompt to read), so its lookup can go with the claim; else None (the
        pipeline then looks up after rendering, or finds the job's error there)."""
        cache = self.res.response_cache
        if cache is None or job.prompt is not None or (job.cache is None and not self.res.config.cache.routes):
            return None
        spec = cache_spec(job, self.res.config)
        if spec is None:
            return None
        try:
            chain = resolve_chain(job, self.res.catalog)
            if job.messages is not None:
                messages = job.messages
            else:
                messages = render_job(job, self.res.redis, max_chars=self.res.settings.prompt_max_chars).messages
        except LLMQError:
            return None
        return CachedRun(cache, cache_key(job, spec, chain, messages), job.id)

    def _end_failed(self, run: JobRun, exc: LLMQError) -> JobOutcome:
        try:
            return JobOutcome(result=self._endings.failed(run, exc))
        except RunFencedError as fenced:
            return self._fenced(run, fenced)

    def _fenced(self, run: JobRun, exc: RunFencedError) -> JobOutcome:
        """This run lost the claim (the run holding it ends the job) or was handed back at shutdown
        (the next run ends it): either way this one writes no ending."""
        if run.handed_back:
            log.warning("job %s: stopped by the worker's shutdown; handing it back to the queue", run.job.id)
            return JobOutcome(skipped="handed back at shutdown", handed_back=True)  # the claim is released
        run.token = ""  # not ours to release
        if self._records_gone(run.keys):
            log.error(
                "job %s: its claim and its records are gone from Redis, not taken by another run: Redis lost "
                "its data (restarted without persistence, or flushed), and with it the job; this run stops "
                "and the job ends nowhere unless it is submitted again. Run Redis with appendonly yes "
                "(ops/redis.conf)",
                run.job.id,
            )
            return JobOutcome(skipped="fenced: the job's records are gone from Redis")
        log.warning("job %s: %s", run.job.id, exc.message)
        return JobOutcome(skipped="fenced: the job moved to another run")

    def _records_gone(self, keys: JobKeys) -> bool:
        """Neither the job's claim nor its metadata is in Redis (a fenced run's cause: data lost, not
        another run); a Redis that does not answer says nothing here."""
        try:
            return int(self.res.redis.exists(keys.claim, keys.meta)) == 0
        except redis.RedisError:
            return False

    def _requeue(self, run: JobRun, exc: RetryLaterError) -> JobOutcome:
        wait = exc.retry_after or 1.0
        remaining = run.ctx.remaining()
        if remaining is not None and wait >= remaining:
            late = DeadlineExceededError(
                f"the job's deadline leaves {max(remaining, 0):.1f}s, the next try needs a {wait:.1f}s wait: "
                f"{exc.message}",
                provider=exc.provider,
                model=exc.model,
                code=exc.code,
            )
            return self._end_failed(run, late)
        limit = self.res.config.max_requeues
        if self.res.redis.hincrby(run.keys.meta, "requeues", 1) > limit:
            final = RequeueLimitError(
                f"gave up after {limit} re-queues (max_requeues); the last: {exc.message}",
                provider=exc.provider,
                model=exc.model,
                status=exc.status,
                code=exc.code,
            )
            return self._end_failed(run, final)
        attempts = _ATTEMPTS.dump_json(run.ctx.attempts)
        self.res.redis.hset(run.keys.meta, mapping={"state": "queued", "attempts": attempts})
        return JobOutcome(requeue_after_s=wait, requeue_reason=exc.code or error_type_name(exc))

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


def _check_capabilities(job: CompletionJob, chain: list[str], providers: Mapping[str, ProviderInfo]) -> None:
    """The contract's capability table again, now that route aliases are resolved (named
    providers by their type and ``params`` list)."""
    for model_id in chain:
        found = job.capability_problems(model_id, providers)
        if found:
            raise BadRequestError(
                str(found[0]), provider=found[0].provider, model=model_id, code="unsupported_parameter"
            )

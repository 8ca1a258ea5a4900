"""What a calling service uses: submit jobs, wait for results, follow streams, cancel.

Imports only :mod:`workers.contract` and :mod:`workers.connections` from the worker side. Jobs are
validated here, before anything is enqueued, and sent to Celery by task name as JSON. Submitting the same job id twice
enqueues it once: the job's metadata hash is created with ``HSETNX`` before the message is sent.
Settings (Redis URL, queue, TTL) come from :class:`~producers.settings.ProducerSettings`
(``LLMQ_REDIS_URL``, ``LLMQ_QUEUE`` ...) unless given; the I/O-free half shared with
:class:`~producers.aclient.AsyncClient` is :class:`~producers.core.ClientCore`.

``stream()`` subscribes to the job's live channel *first*, then replays the job's Redis Stream,
then follows live messages, skipping what the replay already delivered and filling any gap from
the Stream, so a subscriber that joins late, or reconnects with ``from_seq``, misses nothing.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import redis
from opentelemetry.trace import Tracer

from producers.catalog import live_presences
from producers.core import (
    CANCEL_CHANNEL,
    RECONNECT_FIRST_S,
    REDIS_DOWN,
    REGISTER_LUA,
    REPLAY_PAGE,
    RESULT_RIDE_OUT_S,
    SUBMIT_RIDE_OUT_S,
    ClientCore,
    make_celery,
    models_error,
    next_backoff,
    validate_job,
)
from producers.cursor import GAP, EventCursor, JobLostError, ResultTimeoutError
from producers.errors import InvalidJobError, RedisFullError, SubmitRefusedError
from producers.onestep import SUBMIT_LUA
from producers.prompts import PromptResolver, job_data
from producers.providers import LiveProviders, capability_error
from producers.settings import ProducerSettings, producer_settings
from producers.tools import LiveTools, missing_tools_error
from producers.tracing import submit_span
from producers.watermark import MemoryWatermark, is_out_of_memory
from workers.connections.redisclient import redis_client as make_redis
from workers.contract import (
    CancelledEvent,
    CompletionJob,
    CompletionResult,
    DoneEvent,
    ErrorEvent,
    JobKeys,
    StreamEvent,
)

__all__ = [
    "CANCEL_CHANNEL",
    "Client",
    "InvalidJobError",
    "JobHandle",
    "JobLostError",
    "RedisFullError",
    "ResultTimeoutError",
    "SubmitRefusedError",
    "default_redis_url",
    "make_celery",
    "validate_job",
]

log = logging.getLogger("llmq.producer")


#: Redis restarting or failing over: readers reconnect with backoff instead of failing.


def default_redis_url() -> str:
    """``LLMQ_REDIS_URL``, else the local default (read now, from the environment)."""
    return producer_settings().redis_url


T = TypeVar("T")


@dataclass(frozen=True)
class JobHandle:
    id: str
    #: False when a job with this id had already been submitted (it was not enqueued again).
    enqueued: bool
    client: Client

    def result(self, timeout: float | None = None) -> CompletionResult:
        return self.client.result(self.id, timeout=timeout)

    def stream(self, from_seq: int = 0, timeout: float | None = None) -> Iterator[StreamEvent]:
        return self.client.stream(self.id, from_seq=from_seq, timeout=timeout)

    def cancel(self) -> bool:
        return self.client.cancel(self.id)


class Client(ClientCore):
    """Synchronous producer client. Thread-safe; create one per process and reuse it."""

    def __init__(
        self,
        redis_url: str | None = None,
        *,
        queue: str | None = None,
        result_ttl_s: int | None = None,
        settings: ProducerSettings | None = None,
        tracer: Tracer | None = None,
        redis_client: redis.Redis | None = None,
    ) -> None:
        super().__init__(redis_url, queue=queue, result_ttl_s=result_ttl_s, settings=settings, tracer=tracer)
        self.redis = redis_client or make_redis(
            self.redis_url, max_connections=64, socket_connect_timeout=self.settings.redis_connect_timeout_s
        )
        self._register = self.redis.register_script(REGISTER_LUA)
        self._submit = self.redis.register_script(SUBMIT_LUA)
        #: The job queue's own Redis (``LLMQ_BROKER_URL=redis://...``), for its memory watermark.
        self._broker_redis: redis.Redis | None = None
        #: Resolves ``prompt`` labels and validates prompt variables (published versions are cached).
        self.prompts = PromptResolver(self.redis)
        self._tools = LiveTools()
        self._providers = LiveProviders()

    # --- submit ---------------------------------------------------------------------------------

    def validate(self, job: CompletionJob | dict[str, Any], **overrides: Any) -> CompletionJob:
        """Every check :meth:`submit` makes, nothing enqueued: the job as it would be sent.

        Resolves a ``prompt`` label (for the job's id, so a traffic split picks what submit would),
        checks the variables against that version's schema, that the worker tools it names are
        registered by a live worker, and that the workers accept its model names (provider names,
        route aliases, bare names, prices: :meth:`check_models`). Raises :class:`InvalidJobError`
        naming each field.
        """
        valid = self.stamped(self.prompts.prepare(job_data(job, overrides)))
        missing = self._tools.missing(self.redis, valid.worker_tools)
        if missing:
            raise InvalidJobError(*missing_tools_error(valid, missing, self._tools.names))
        self.check_models(valid)
        return valid

    def check_models(self, job: CompletionJob) -> None:
        """Refuse model names the workers do not accept (:class:`InvalidJobError`, with the nearest
        known names), and parameters a named provider of the chain cannot take (route aliases
        resolved); cheap: the workers' catalog and providers are cached (``producers/catalog.py``,
        ``producers/providers.py``)."""
        problems = self.catalog.problems(self.redis, job)
        if problems:
            raise models_error(problems)
        refused = self._providers.check(self.redis, job, self.catalog.chain(job))
        if refused is not None:
            raise InvalidJobError(*capability_error(job, refused))

    def submit(self, job: CompletionJob | dict[str, Any], **overrides: Any) -> JobHandle:
        """Validate and enqueue ``job``; a second submit of the same id does not run it twice.

        A job with a ``prompt`` gets its label resolved to a version and its variables checked
        against that version's schema here, before anything is enqueued. Raises
        :class:`RedisFullError` (nothing registered: the same submit works later) when Redis is
        above its high watermark or refuses the job's writes at ``maxmemory``.
        """
        # the checks read Redis (workers' catalog, tools, prompts): a fail-over is ridden out like the send
        valid = self._riding_out(lambda: self.validate(job, **overrides))
        keys, args = self.register_args(valid)
        self._admit(valid)
        with submit_span(self.tracer, valid, self.queue) as span:
            if self.in_one_step(valid):
                fresh = self._submit_in_one_step(valid, keys, args)
            else:
                fresh = self._register_then_send(valid, keys, args)
            if not fresh:
                if span.is_recording():
                    span.set_attribute("llmq.duplicate", True)
                return JobHandle(valid.id, False, self)
        return JobHandle(valid.id, True, self)

    def _submit_in_one_step(self, job: CompletionJob, keys: list[str], args: list[Any]) -> int:
        """Register and queue ``job`` with one script (``producers/onestep.py``); safe to repeat
        through a Redis restart (the script knows this call's own tries by their nonce)."""
        script_args, argsrepr = self.one_step.script_args(job, args)
        try:
            fresh = self.registered(self._riding_out(lambda: self._submit(keys=keys, args=script_args)), job)
        except redis.RedisError as exc:
            if not is_out_of_memory(exc):
                raise
            # refused at maxmemory, the script wrote nothing: neither registered nor queued
            raise self._full(self.memory, self.redis, "registering and queueing the job") from exc
        if fresh:
            self.announce_sent(job, argsrepr)
        return fresh

    def _register_then_send(self, job: CompletionJob, keys: list[str], args: list[Any]) -> int:
        """Register ``job``, then send its message through Celery (or hand it to the batch lane)."""
        try:
            fresh = self.registered(self._register_riding_out(keys, args), job)
        except redis.RedisError as exc:
            if not is_out_of_memory(exc):
                raise
            raise self._full(self.memory, self.redis, "registering the job") from exc
        if not fresh:
            return fresh
        try:
            self.dispatch(job)
        except Exception as exc:
            self._unregister(job, keys, fresh)  # let the caller retry the same id
            if not is_out_of_memory(exc):
                raise
            mark, client = self._watched()[-1]  # the Redis holding the queue
            raise self._full(mark, client, "queueing the job") from exc
        if not self.sent_by_push:
            self._mark_sent(keys[0])
        return fresh

    def dispatch(self, job: CompletionJob) -> None:
        """Send a registered job on its way: to the provider batch lane when it goes there
        (:meth:`hands_to_batch`, one round trip, no queue message), else its queue message."""
        if self.hands_to_batch(job):
            pipe = self.redis.pipeline(transaction=False)
            self.intake_commands(pipe, job)
            pipe.execute()
        else:
            self.send(job)

    # --- the memory watermark (producers/watermark.py) ------------------------------------------

    def _admit(self, job: CompletionJob) -> None:
        """Refuse ``job`` (:class:`RedisFullError`) when Redis is above its high watermark."""
        size = self.job_bytes(job)
        for mark, client in self._watched():
            if mark.due(size):
                self._read_memory(mark, client)
            mark.admit(size)

    def _watched(self) -> list[tuple[MemoryWatermark, redis.Redis]]:
        watched = [(self.memory, self.redis)]
        if self.broker_memory is not None:
            if self._broker_redis is None:
                self._broker_redis = make_redis(self.broker_url, max_connections=4)
            watched.append((self.broker_memory, self._broker_redis))
        return watched

    @staticmethod
    def _read_memory(mark: MemoryWatermark, client: redis.Redis) -> None:
        mark.begin()
        try:
            mark.record(client.info("memory"))
        except redis.RedisError as exc:
            mark.failed(exc)
        finally:
            mark.end()

    def full_error(self, refused: str) -> RedisFullError:
        """The error for a write of ``refused`` (what it was for) that Redis refused at ``maxmemory``,
        with fresh figures: for a caller's own writes before a submit (a replay's record)."""
        return self._full(self.memory, self.redis, refused)

    def _full(self, mark: MemoryWatermark, client: redis.Redis, refused: str) -> RedisFullError:
        """The error for a write Redis refused at ``maxmemory``, with fresh figures (reads still work)."""
        self._read_memory(mark, client)
        return mark.full_error(refused_by=refused)

    def _unregister(self, job: CompletionJob, keys: list[str], fresh: int) -> None:
        """Undo a registration whose message was not sent: a later submit of the id sends it."""
        with contextlib.suppress(redis.RedisError):
            if fresh == 1:
                pipe = self.redis.pipeline(transaction=False)
                self.unregister_commands(pipe, job)
                pipe.execute()
            elif fresh == 2:  # re-registered an unsent job: make the next submit send it again at once
                self.redis.hdel(keys[0], "submitted_at")

    def _mark_sent(self, meta: str) -> None:
        """Record the send. A Redis at ``maxmemory`` refusing this small write does not undo the send:
        the job is queued; a later submit of the same id may only send it again (the worker's claim
        runs it once)."""
        try:
            self.redis.hset(meta, mapping=self.sent_fields())
        except redis.RedisError as exc:
            if not is_out_of_memory(exc):
                raise

    def _register_riding_out(self, keys: list[str], args: list[Any]) -> Any:
        """Register the job, riding out a Redis restart or fail-over (:meth:`_riding_out`).

        Safe to repeat: the script takes a registration carrying this submit's own stamp as this
        caller's (its reply was lost), not as a duplicate.
        """
        return self._riding_out(lambda: self._register(keys=keys, args=args))

    @staticmethod
    def _riding_out(call: Callable[[], T]) -> T:
        """``call()``, repeated through a Redis restart or fail-over for up to :data:`SUBMIT_RIDE_OUT_S`
        (for calls that are safe to repeat: a submit's reads and its idempotent registration)."""
        deadline = time.monotonic() + SUBMIT_RIDE_OUT_S
        backoff = RECONNECT_FIRST_S
        while True:
            try:
                return call()
            except REDIS_DOWN:
                if time.monotonic() + backoff >= deadline:
                    raise
                time.sleep(backoff)
                backoff = next_backoff(backoff)

    # --- read -------------------------------------------------------------------------------------

    def get_result(self, job_id: str) -> CompletionResult | None:
        return self.parse_result(self.redis.get(JobKeys(job_id).result))

    def status(self, job_id: str) -> dict[str, str] | None:
        """The job's metadata (``state``, ``tenant``, ``submitted_at`` ...); ``None`` for an unknown job."""
        return self.parse_status(self.redis.hgetall(JobKeys(job_id).meta))

    def result(self, job_id: str, timeout: float | None = None) -> CompletionResult:
        """Wait for the job's final result (raises :class:`ResultTimeoutError`); rides out a Redis restart."""
        with contextlib.suppress(*REDIS_DOWN):  # else the stream below waits for Redis
            existing = self.get_result(job_id)
            if existing is not None:
                return existing
        for event in self.stream(job_id, timeout=timeout, deltas=False):
            if isinstance(event, DoneEvent | ErrorEvent | CancelledEvent):  # the terminal events
                stored = self._get_result_riding_out(job_id, timeout)
                if stored is not None:
                    return stored
                if event.result is not None:
                    return event.result
        raise ResultTimeoutError(f"job {job_id} has no result yet")

    def _get_result_riding_out(self, job_id: str, timeout: float | None) -> CompletionResult | None:
        deadline = time.monotonic() + (timeout if timeout is not None else RESULT_RIDE_OUT_S)
        while True:
            try:
                return self.get_result(job_id)
            except REDIS_DOWN:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.2)

    def stream(
        self,
        job_id: str,
        *,
        from_seq: int = 0,
        timeout: float | None = None,
        idle_check_s: float = 1.0,
        deltas: bool = True,
    ) -> Iterator[StreamEvent]:
        """Every event of the job from ``from_seq`` on, in seq order, ending with the terminal one."""
        keys = JobKeys(job_id)
        cursor = EventCursor(job_id, from_seq=from_seq, deltas=deltas, timeout=timeout, idle_check_s=idle_check_s)
        backoff = RECONNECT_FIRST_S
        try:
            while True:
                try:
                    yield from self._follow(keys, cursor)
                    return
                except REDIS_DOWN:
                    # Redis restarted or failed over: wait (bounded by the timeout), then subscribe
                    # again and replay from the next seq, so nothing is missed or repeated
                    time.sleep(min(backoff, cursor.wait_s()))
                    backoff = next_backoff(backoff)
        except JobLostError:
            raise  # says what happened already
        except ResultTimeoutError as exc:
            raise ResultTimeoutError(self.why_not_ended(job_id, str(exc))) from None

    def why_not_ended(self, job_id: str, what: str) -> str:
        """``what`` (a timeout) with what is true of the job: unknown, queued with no worker, running."""
        keys = JobKeys(job_id)
        try:
            meta = self.status(job_id)
            last = self.last_event(self.redis.xrevrange(keys.events, count=1))
            presences = live_presences(self.redis)
        except REDIS_DOWN as exc:
            return self.unreachable_reason(what, exc)
        except redis.RedisError:
            return what
        return self.timeout_reason(what, meta, last, presences)

    def _say_if_no_worker(self, job_id: str) -> None:
        """A wait without a word so far: log once if the job is queued with no worker on its queue."""
        try:
            meta = self.status(job_id)
            last = self.last_event(self.redis.xrevrange(JobKeys(job_id).events, count=1))
            notice = self.no_worker_notice(job_id, meta, last, live_presences(self.redis))
        except redis.RedisError:
            return
        if notice is not None:
            log.warning("%s", notice)

    def queue_workers(self) -> list[str]:
        """The live workers consuming this client's queue (what they publish: one round trip or two)."""
        return self.workers_of(live_presences(self.redis))

    def _follow(self, keys: JobKeys, cursor: EventCursor) -> Iterator[StreamEvent]:
        pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
        try:
            pubsub.subscribe(keys.channel)
            while True:
                # replay (first pass) and gap filling (later passes) from the Stream
                for event in self._replay(keys, cursor.next_seq):
                    out = cursor.replayed(event)
                    if out is not None:
                        yield out
                    if cursor.done:
                        return
                if cursor.waiting_past_start and cursor.ended_before(
                    self.last_event(self.redis.xrevrange(keys.events, count=1))
                ):
                    return  # the job ended before the seq this consumer asked for
                while True:
                    message = pubsub.get_message(timeout=cursor.wait_s())
                    if message is None:
                        if cursor.worker_check_due(self.no_worker_notice_s):
                            self._say_if_no_worker(cursor.job_id)
                        cursor.still_there(bool(self.redis.exists(*keys.records)))
                        break  # idle: look in the Stream for anything missed
                    got = cursor.live(message["data"])
                    if got is GAP:
                        break  # fill it from the Stream
                    if got is not None:
                        yield got
                    if cursor.done:
                        return
        finally:
            with contextlib.suppress(redis.RedisError):
                pubsub.close()

    def _replay(self, keys: JobKeys, from_seq: int) -> Iterator[StreamEvent]:
        start = self.replay_start(from_seq)
        while True:
            entries = self.redis.xrange(keys.events, min=start, count=REPLAY_PAGE)
            if not entries:
                return
            events, start = self.parse_page(entries)
            yield from events

    # --- control --------------------------------------------------------------------------------------

    def cancel(self, job_id: str) -> bool:
        """Ask for cancellation; True unless the job already finished. The worker aborts its call.
        Raises :class:`RedisFullError` when Redis refuses the cancel at ``maxmemory`` (retry it later)."""
        pipe = self.redis.pipeline(transaction=False)
        self.cancel_commands(pipe, job_id)
        try:
            done, _, _ = pipe.execute()
        except redis.RedisError as exc:  # the cancel flag refused at maxmemory: RedisFullError, as a submit
            if not is_out_of_memory(exc):
                raise
            raise self.full_error("cancelling the job") from exc
        return not done

    def close(self) -> None:
        self.redis.close()
        if self._broker_redis is not None:
            self._broker_redis.close()
        super().close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

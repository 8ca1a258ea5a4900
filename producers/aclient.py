"""The asyncio twin of :class:`producers.client.Client` (same semantics, ``await``-able)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import redis
import redis.asyncio as aredis
from opentelemetry.trace import Tracer

from producers.catalog import live_presences_async
from producers.core import (
    RECONNECT_FIRST_S,
    REDIS_DOWN,
    REGISTER_LUA,
    REPLAY_PAGE,
    RESULT_RIDE_OUT_S,
    SUBMIT_RIDE_OUT_S,
    ClientCore,
    models_error,
    next_backoff,
)
from producers.cursor import GAP, EventCursor, JobLostError, ResultTimeoutError
from producers.errors import InvalidJobError, RedisFullError
from producers.onestep import SUBMIT_LUA
from producers.prompts import AsyncPromptResolver, job_data
from producers.providers import LiveProviders, capability_error
from producers.settings import ProducerSettings
from producers.tools import LiveTools, missing_tools_error
from producers.tracing import submit_span
from producers.watermark import MemoryWatermark, is_out_of_memory
from workers.connections.redisclient import async_redis_client
from workers.contract import (
    CancelledEvent,
    CompletionJob,
    CompletionResult,
    DoneEvent,
    ErrorEvent,
    JobKeys,
    StreamEvent,
)

__all__ = ["AsyncClient", "AsyncJobHandle"]

log = logging.getLogger("llmq.producer")


T = TypeVar("T")


class AsyncJobHandle:
    def __init__(self, job_id: str, enqueued: bool, client: AsyncClient) -> None:
        self.id = job_id
        self.enqueued = enqueued
        self.client = client

    async def result(self, timeout: float | None = None) -> CompletionResult:
        return await self.client.result(self.id, timeout=timeout)

    def stream(self, from_seq: int = 0, timeout: float | None = None) -> AsyncIterator[StreamEvent]:
        return self.client.stream(self.id, from_seq=from_seq, timeout=timeout)

    async def cancel(self) -> bool:
        return await self.client.cancel(self.id)


class AsyncClient(ClientCore):
    """The asyncio producer client; one per event loop. Same settings and semantics as ``Client``."""

    def __init__(
        self,
        redis_url: str | None = None,
        *,
        queue: str | None = None,
        result_ttl_s: int | None = None,
        settings: ProducerSettings | None = None,
        tracer: Tracer | None = None,
        max_connections: int = 256,
    ) -> None:
        super().__init__(redis_url, queue=queue, result_ttl_s=result_ttl_s, settings=settings, tracer=tracer)
        self.redis = async_redis_client(
            self.redis_url,
            max_connections=max_connections,
            socket_connect_timeout=self.settings.redis_connect_timeout_s,
        )
        self._register = self.redis.register_script(REGISTER_LUA)
        self._submit = self.redis.register_script(SUBMIT_LUA)
        self._broker_redis: aredis.Redis | None = None
        self.prompts = AsyncPromptResolver(self.redis)
        self._tools = LiveTools()
        self._providers = LiveProviders()

    async def validate(self, job: CompletionJob | dict[str, Any], **overrides: Any) -> CompletionJob:
        """Every check :meth:`submit` makes, nothing enqueued (see ``Client.validate``)."""
        valid = self.stamped(await self.prompts.prepare(job_data(job, overrides)))
        missing = await self._tools.missing_async(self.redis, valid.worker_tools)
        if missing:
            raise InvalidJobError(*missing_tools_error(valid, missing, self._tools.names))
        await self.check_models(valid)
        return valid

    async def check_models(self, job: CompletionJob) -> None:
        """Refuse model names the workers do not accept, and parameters a named provider of the
        chain cannot take (see ``Client.check_models``)."""
        problems = await self.catalog.problems_async(self.redis, job)
        if problems:
            raise models_error(problems)
        refused = await self._providers.check_async(self.redis, job, self.catalog.chain(job))
        if refused is not None:
            raise InvalidJobError(*capability_error(job, refused))

    async def submit(self, job: CompletionJob | dict[str, Any], **overrides: Any) -> AsyncJobHandle:
        """Validate and enqueue ``job`` (see ``Client.submit``; raises :class:`RedisFullError` alike)."""
        # the checks read Redis (workers' catalog, tools, prompts): a fail-over is ridden out like the send
        valid = await self._riding_out(lambda: self.validate(job, **overrides))
        keys, args = self.register_args(valid)
        await self._admit(valid)
        with submit_span(self.tracer, valid, self.queue) as span:
            if self.in_one_step(valid):
                fresh = await self._submit_in_one_step(valid, keys, args)
            else:
                fresh = await self._register_then_send(valid, keys, args)
            if not fresh:
                if span.is_recording():
                    span.set_attribute("llmq.duplicate", True)
                return AsyncJobHandle(valid.id, False, self)
        return AsyncJobHandle(valid.id, True, self)

    async def _submit_in_one_step(self, job: CompletionJob, keys: list[str], args: list[Any]) -> int:
        """Register and queue ``job`` with one script, on the event loop (``Client._submit_in_one_step``)."""
        script_args, argsrepr = self.one_step.script_args(job, args)
        try:
            fresh = self.registered(await self._riding_out(lambda: self._submit(keys=keys, args=script_args)), job)
        except redis.RedisError as exc:
            if not is_out_of_memory(exc):
                raise
            # refused at maxmemory, the script wrote nothing: neither registered nor queued
            raise await self._full(self.memory, self.redis, "registering and queueing the job") from exc
        if fresh:
            if self.sent_events is not None and self.sent_events.would_publish():
                await asyncio.to_thread(self.announce_sent, job, argsrepr)  # the events' round trip, off the loop
            else:
                self.announce_sent(job, argsrepr)
        return fresh

    async def _register_then_send(self, job: CompletionJob, keys: list[str], args: list[Any]) -> int:
        """Register ``job``, then send its message (``Client._register_then_send``)."""
        try:
            fresh = self.registered(await self._register_riding_out(keys, args), job)
        except redis.RedisError as exc:
            if not is_out_of_memory(exc):
                raise
            raise await self._full(self.memory, self.redis, "registering the job") from exc
        if not fresh:
            return fresh
        try:
            if self.hands_to_batch(job):  # the provider batch lane: one round trip, no message
                pipe = self.redis.pipeline(transaction=False)
                self.intake_commands(pipe, job)
                await pipe.execute()
            else:
                # kombu is synchronous; keep the event loop free while it talks to the broker
                await asyncio.to_thread(self.send, job)
        except Exception as exc:
            await self._unregister(job, keys, fresh)
            if not is_out_of_memory(exc):
                raise
            mark, client = self._watched()[-1]  # the Redis holding the queue
            raise await self._full(mark, client, "queueing the job") from exc
        if not self.sent_by_push:
            await self._mark_sent(keys[0])
        return fresh

    # --- the memory watermark (producers/watermark.py), as in Client ---------------------------------

    async def _admit(self, job: CompletionJob) -> None:
        size = self.job_bytes(job)
        for mark, client in self._watched():
            if mark.due(size):
                await self._read_memory(mark, client)
            mark.admit(size)

    def _watched(self) -> list[tuple[MemoryWatermark, aredis.Redis]]:
        watched = [(self.memory, self.redis)]
        if self.broker_memory is not None:
            if self._broker_redis is None:
                self._broker_redis = async_redis_client(self.broker_url, max_connections=4)
            watched.append((self.broker_memory, self._broker_redis))
        return watched

    @staticmethod
    async def _read_memory(mark: MemoryWatermark, client: aredis.Redis) -> None:
        mark.begin()
        try:
            mark.record(await client.info("memory"))
        except redis.RedisError as exc:
            mark.failed(exc)
        finally:
            mark.end()

    async def full_error(self, refused: str) -> RedisFullError:
        """The error for a write of ``refused`` (what it was for) that Redis refused at ``maxmemory``,
        with fresh figures: for a caller's own writes before a submit (a replay's record)."""
        return await self._full(self.memory, self.redis, refused)

    async def _full(self, mark: MemoryWatermark, client: aredis.Redis, refused: str) -> RedisFullError:
        await self._read_memory(mark, client)
        return mark.full_error(refused_by=refused)

    async def _unregister(self, job: CompletionJob, keys: list[str], fresh: int) -> None:
        with contextlib.suppress(redis.RedisError):
            if fresh == 1:
                pipe = self.redis.pipeline(transaction=False)
                self.unregister_commands(pipe, job)
                await pipe.execute()
            elif fresh == 2:
                await self.redis.hdel(keys[0], "submitted_at")

    async def _mark_sent(self, meta: str) -> None:
        try:
            await self.redis.hset(meta, mapping=self.sent_fields())
        except redis.RedisError as exc:
            if not is_out_of_memory(exc):
                raise

    async def _register_riding_out(self, keys: list[str], args: list[Any]) -> Any:
        """Register, riding out a Redis restart or fail-over (see ``Client._register_riding_out``)."""
        return await self._riding_out(lambda: self._register(keys=keys, args=args))

    @staticmethod
    async def _riding_out(call: Callable[[], Awaitable[T]]) -> T:
        """``await call()``, repeated through a Redis restart or fail-over (see ``Client._riding_out``)."""
        deadline = time.monotonic() + SUBMIT_RIDE_OUT_S
        backoff = RECONNECT_FIRST_S
        while True:
            try:
                return await call()
            except REDIS_DOWN:
                if time.monotonic() + backoff >= deadline:
                    raise
                await asyncio.sleep(backoff)
                backoff = next_backoff(backoff)

    async def get_result(self, job_id: str) -> CompletionResult | None:
        return self.parse_result(await self.redis.get(JobKeys(job_id).result))

    async def status(self, job_id: str) -> dict[str, str] | None:
        """The job's metadata (``state``, ``tenant``, ``submitted_at`` ...); ``None`` for an unknown job."""
        return self.parse_status(await self.redis.hgetall(JobKeys(job_id).meta))

    async def result(self, job_id: str, timeout: float | None = None) -> CompletionResult:
        """Wait for the job's final result (raises :class:`ResultTimeoutError`); rides out a Redis restart."""
        with contextlib.suppress(*REDIS_DOWN):  # else the stream below waits for Redis
            existing = await self.get_result(job_id)
            if existing is not None:
                return existing
        async for event in self.stream(job_id, timeout=timeout, deltas=False):
            if isinstance(event, DoneEvent | ErrorEvent | CancelledEvent):  # the terminal events
                stored = await self._get_result_riding_out(job_id, timeout)
                if stored is not None:
                    return stored
                if event.result is not None:
                    return event.result
        raise ResultTimeoutError(f"job {job_id} has no result yet")

    async def _get_result_riding_out(self, job_id: str, timeout: float | None) -> CompletionResult | None:
        deadline = time.monotonic() + (timeout if timeout is not None else RESULT_RIDE_OUT_S)
        while True:
            try:
                return await self.get_result(job_id)
            except REDIS_DOWN:
                if time.monotonic() >= deadline:
                    raise
                await asyncio.sleep(0.2)

    async def stream(
        self,
        job_id: str,
        *,
        from_seq: int = 0,
        timeout: float | None = None,
        idle_check_s: float = 1.0,
        deltas: bool = True,
    ) -> AsyncIterator[StreamEvent]:
        """Every event of the job from ``from_seq`` on, in seq order, ending with the terminal one.

        Rides out a Redis restart or fail-over like ``Client.stream``: it waits with backoff (bounded
        by ``timeout``), subscribes again and replays from the next seq, so nothing is missed or
        repeated. One generator, no inner one: an async generator left unfinished inside another is
        only closed by the GC, and its pub/sub connection with it.
        """
        keys = JobKeys(job_id)
        cursor = EventCursor(job_id, from_seq=from_seq, deltas=deltas, timeout=timeout, idle_check_s=idle_check_s)
        backoff = RECONNECT_FIRST_S
        while True:
            pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(keys.channel)
                while True:
                    # replay (first pass) and gap filling (later passes) from the Stream, a page at a time
                    start = self.replay_start(cursor.next_seq)
                    while entries := await self.redis.xrange(keys.events, min=start, count=REPLAY_PAGE):
                        events, start = self.parse_page(entries)
                        for event in events:
                            out = cursor.replayed(event)
                            if out is not None:
                                yield out
                            if cursor.done:
                                return
                    if cursor.waiting_past_start and cursor.ended_before(
                        self.last_event(await self.redis.xrevrange(keys.events, count=1))
                    ):
                        return  # the job ended before the seq this consumer asked for
                    while True:
                        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=cursor.wait_s())
                        if message is None:
                            if cursor.worker_check_due(self.no_worker_notice_s):
                                await self._say_if_no_worker(job_id)
                            cursor.still_there(bool(await self.redis.exists(*keys.records)))
                            break  # idle: look in the Stream for anything missed
                        got = cursor.live(message["data"])
                        if got is GAP:
                            break  # fill it from the Stream
                        if got is not None:
                            yield got
                        if cursor.done:
                            return
            except REDIS_DOWN:
                try:
                    wait = cursor.wait_s()
                except ResultTimeoutError as exc:
                    raise ResultTimeoutError(await self.why_not_ended(job_id, str(exc))) from None
                await asyncio.sleep(min(backoff, wait))
                backoff = next_backoff(backoff)
            except JobLostError:
                raise  # says what happened already
            except ResultTimeoutError as exc:
                raise ResultTimeoutError(await self.why_not_ended(job_id, str(exc))) from None
            finally:
                with contextlib.suppress(*REDIS_DOWN, OSError):
                    await pubsub.aclose()

    async def why_not_ended(self, job_id: str, what: str) -> str:
        """``what`` (a timeout) with what is true of the job (see ``Client.why_not_ended``)."""
        keys = JobKeys(job_id)
        try:
            meta = await self.status(job_id)
            last = self.last_event(await self.redis.xrevrange(keys.events, count=1))
            presences = await live_presences_async(self.redis)
        except REDIS_DOWN as exc:
            return self.unreachable_reason(what, exc)
        except redis.RedisError:
            return what
        return self.timeout_reason(what, meta, last, presences)

    async def _say_if_no_worker(self, job_id: str) -> None:
        """See ``Client._say_if_no_worker``."""
        try:
            meta = await self.status(job_id)
            last = self.last_event(await self.redis.xrevrange(JobKeys(job_id).events, count=1))
            notice = self.no_worker_notice(job_id, meta, last, await live_presences_async(self.redis))
        except redis.RedisError:
            return
        if notice is not None:
            log.warning("%s", notice)

    async def queue_workers(self) -> list[str]:
        """The live workers consuming this client's queue (see ``Client.queue_workers``)."""
        return self.workers_of(await live_presences_async(self.redis))

    async def cancel(self, job_id: str) -> bool:
        """Ask for cancellation; True unless the job already finished. The worker aborts its call.
        Raises :class:`RedisFullError` when Redis refuses the cancel at ``maxmemory`` (retry it later)."""
        pipe = self.redis.pipeline(transaction=False)
        self.cancel_commands(pipe, job_id)
        try:
            done, _, _ = await pipe.execute()
        except redis.RedisError as exc:  # the cancel flag refused at maxmemory: RedisFullError, as a submit
            if not is_out_of_memory(exc):
                raise
            raise await self.full_error("cancelling the job") from exc
        return not done

    async def aclose(self) -> None:
        await self.redis.aclose()
        if self._broker_redis is not None:
            await self._broker_redis.aclose()
        self.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

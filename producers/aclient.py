"""The asyncio twin of :class:`producers.client.Client` (same semantics, ``await``-able)."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import AsyncIterator
from typing import Any

from opentelemetry.trace import Tracer

from producers.client import (
    _REGISTER_LUA,
    CANCEL_CHANNEL,
    RESEND_AFTER_S,
    ResultTimeoutError,
    default_redis_url,
    make_celery,
    validate_job,
)
from producers.cursor import GAP, EventCursor
from producers.prompts import AsyncPromptResolver, job_data
from producers.redisconn import async_redis_client
from producers.tracing import monitor_content, producer_tracer, send_options, submit_span
from workers.contract import (
    DEFAULT_QUEUE,
    TASK_NAME,
    TERMINAL_EVENT_TYPES,
    CompletionJob,
    CompletionResult,
    JobKeys,
    StreamEvent,
    parse_event,
)

__all__ = ["AsyncClient", "AsyncJobHandle"]


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


class AsyncClient:
    def __init__(
        self,
        redis_url: str | None = None,
        *,
        queue: str = DEFAULT_QUEUE,
        result_ttl_s: int = 86_400,
        max_connections: int = 256,
        tracer: Tracer | None = None,
    ) -> None:
        self.redis_url = redis_url or default_redis_url()
        self.queue = queue
        self.result_ttl_s = result_ttl_s
        self.redis = async_redis_client(self.redis_url, max_connections=max_connections)
        self._celery = make_celery(self.redis_url, queue)
        self._register = self.redis.register_script(_REGISTER_LUA)
        #: Submit spans (``producers/tracing.py``): the OTEL_* configured tracer, or a no-op.
        self.tracer = tracer or producer_tracer()
        self._monitor_content = monitor_content()
        self.prompts = AsyncPromptResolver(self.redis)

    async def submit(self, job: CompletionJob | dict[str, Any], **overrides: Any) -> AsyncJobHandle:
        valid = validate_job(await self.prompts.prepare(job_data(job, overrides)))
        if valid.submitted_at is None:
            valid.submitted_at = time.time()
        keys = JobKeys(valid.id)
        with submit_span(self.tracer, valid, self.queue) as span:
            fresh = await self._register(
                keys=[keys.meta], args=[valid.tenant, valid.submitted_at, self.result_ttl_s, RESEND_AFTER_S]
            )
            if not fresh:
                if span.is_recording():
                    span.set_attribute("llmq.duplicate", True)
                return AsyncJobHandle(valid.id, False, self)
            payload = valid.model_dump(mode="json", exclude_none=True)
            options = send_options(payload, content=self._monitor_content)
            try:
                # kombu is synchronous; keep the event loop free while it talks to the broker
                await asyncio.to_thread(
                    functools.partial(
                        self._celery.send_task, TASK_NAME, args=[payload], task_id=valid.id, queue=self.queue, **options
                    )
                )
            except Exception:
                if fresh == 1:
                    await self.redis.delete(keys.meta)
                raise
        await self.redis.hset(keys.meta, "sent", 1)
        return AsyncJobHandle(valid.id, True, self)

    async def get_result(self, job_id: str) -> CompletionResult | None:
        raw = await self.redis.get(JobKeys(job_id).result)
        return CompletionResult.model_validate_json(raw) if raw else None

    async def status(self, job_id: str) -> dict[str, str] | None:
        meta = await self.redis.hgetall(JobKeys(job_id).meta)
        return {k.decode(): v.decode() for k, v in meta.items()} if meta else None

    async def result(self, job_id: str, timeout: float | None = None) -> CompletionResult:
        existing = await self.get_result(job_id)
        if existing is not None:
            return existing
        async for event in self.stream(job_id, timeout=timeout, deltas=False):
            if event.type in TERMINAL_EVENT_TYPES:
                stored = await self.get_result(job_id)
                if stored is not None:
                    return stored
                if event.result is not None:
                    return event.result
        raise ResultTimeoutError(f"job {job_id} has no result yet")

    async def stream(
        self,
        job_id: str,
        *,
        from_seq: int = 0,
        timeout: float | None = None,
        idle_check_s: float = 1.0,
        deltas: bool = True,
    ) -> AsyncIterator[StreamEvent]:
        keys = JobKeys(job_id)
        cursor = EventCursor(job_id, from_seq=from_seq, deltas=deltas, timeout=timeout, idle_check_s=idle_check_s)
        pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
        await pubsub.subscribe(keys.channel)
        try:
            while True:
                async for event in self._replay(keys, cursor.next_seq):
                    out = cursor.replayed(event)
                    if out is not None:
                        yield out
                    if cursor.done:
                        return
                while True:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=cursor.wait_s())
                    if message is None:
                        break
                    out = cursor.live(message["data"])
                    if out is GAP:
                        break
                    if out is not None:
                        yield out
                    if cursor.done:
                        return
        finally:
            await pubsub.aclose()

    async def _replay(self, keys: JobKeys, from_seq: int) -> AsyncIterator[StreamEvent]:
        start = f"{from_seq}-0"
        while True:
            entries = await self.redis.xrange(keys.events, min=start, count=500)
            if not entries:
                return
            for _, fields in entries:
                yield parse_event(fields[b"e"])
            start = "(" + entries[-1][0].decode()

    async def cancel(self, job_id: str) -> bool:
        keys = JobKeys(job_id)
        pipe = self.redis.pipeline(transaction=False)
        pipe.exists(keys.result)
        pipe.set(keys.cancel, "1", ex=self.result_ttl_s)
        pipe.publish(CANCEL_CHANNEL, job_id)
        done, _, _ = await pipe.execute()
        return not done

    async def aclose(self) -> None:
        await self.redis.aclose()
        self._celery.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

"""What a calling service uses: submit jobs, wait for results, follow streams, cancel.

Imports only :mod:`workers.contract` from the worker side. Jobs are validated here, before
anything is enqueued, and sent to Celery by task name as JSON. Submitting the same job id twice
enqueues it once: the job's metadata hash is created with ``HSETNX`` before the message is sent.

``stream()`` subscribes to the job's live channel *first*, then replays the job's Redis Stream,
then follows live messages, skipping what the replay already delivered and filling any gap from
the Stream, so a subscriber that joins late, or reconnects with ``from_seq``, misses nothing.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import redis
from celery import Celery
from opentelemetry.trace import Tracer
from pydantic import ValidationError

from producers.cursor import GAP, EventCursor, ResultTimeoutError
from producers.errors import InvalidJobError
from producers.prompts import PromptResolver, job_data
from producers.redisconn import redis_client as make_redis
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
from workers.contract.redisurl import sentinel_target

__all__ = [
    "CANCEL_CHANNEL",
    "Client",
    "InvalidJobError",
    "JobHandle",
    "JobNotFoundError",
    "ResultTimeoutError",
    "default_redis_url",
    "make_celery",
    "validate_job",
]

#: Must match ``workers.runtime.resources.CANCEL_CHANNEL`` (a test pins them together).
CANCEL_CHANNEL = "llmq:cancel"

# KEYS: meta. ARGV: tenant, submitted_at, ttl, resend_after_s.
# 1 = newly registered; 0 = duplicate id (already sent); 2 = registered earlier but its message was
# never confirmed sent (the producer died in between) and is old enough: send it again (the
# worker's claim still runs a job once).
_REGISTER_LUA = """
if redis.call('HSETNX', KEYS[1], 'state', 'queued') == 1 then
  redis.call('HSET', KEYS[1], 'tenant', ARGV[1], 'submitted_at', ARGV[2])
  redis.call('EXPIRE', KEYS[1], ARGV[3])
  return 1
end
if redis.call('HEXISTS', KEYS[1], 'sent') == 0 then
  local at = tonumber(redis.call('HGET', KEYS[1], 'submitted_at') or '0')
  if tonumber(ARGV[2]) - at > tonumber(ARGV[4]) then
    redis.call('HSET', KEYS[1], 'submitted_at', ARGV[2])
    return 2
  end
end
return 0
"""
#: Redis restarting or failing over: readers reconnect with backoff instead of failing.
_REDIS_DOWN: tuple[type[Exception], ...] = (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError)
#: A registration without a confirmed send is retried by a later submit after this long.
RESEND_AFTER_S = 30


class JobNotFoundError(LookupError):
    pass


def default_redis_url() -> str:
    return os.environ.get("LLMQ_REDIS_URL", "redis://127.0.0.1:6379/0")


def validate_job(job: CompletionJob | dict[str, Any], **overrides: Any) -> CompletionJob:
    """A validated job (a dict is validated; overrides are applied and re-validated)."""
    try:
        if isinstance(job, CompletionJob):
            data = job.model_dump(exclude_unset=False) | overrides
        else:
            data = {**job, **overrides}
        return CompletionJob.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'job'}: {e['msg']}" for e in exc.errors(include_url=False)
        )
        raise InvalidJobError(f"invalid job: {problems}", exc.errors(include_url=False)) from None


def make_celery(redis_url: str, queue: str = DEFAULT_QUEUE) -> Celery:
    """A send-only Celery app matching the worker's wire settings (JSON, same queue); a
    ``sentinel://`` URL (``workers/contract/redisurl.py``) reaches the master through the sentinels."""
    target = sentinel_target(redis_url)
    broker = target.broker_url() if target is not None else redis_url
    transport: dict[str, object] = {"visibility_timeout": 3600, "max_connections": 64}
    if target is not None:
        transport.update(target.transport_options())
    app = Celery("llmqueue-producer", broker=broker, set_as_current=False)
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        task_default_queue=queue,
        task_send_sent_event=True,
        broker_connection_retry_on_startup=True,
        broker_transport_options=transport,
        result_backend=None,
        task_ignore_result=True,
    )
    return app


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


class Client:
    """Synchronous producer client. Thread-safe; create one per process and reuse it."""

    def __init__(
        self,
        redis_url: str | None = None,
        *,
        queue: str = DEFAULT_QUEUE,
        result_ttl_s: int = 86_400,
        redis_client: redis.Redis | None = None,
        tracer: Tracer | None = None,
    ) -> None:
        self.redis_url = redis_url or default_redis_url()
        #: Submit spans (``producers/tracing.py``): the OTEL_* configured tracer, or a no-op.
        self.tracer = tracer or producer_tracer()
        self._monitor_content = monitor_content()
        self.queue = queue
        self.result_ttl_s = result_ttl_s
        self.redis = redis_client or make_redis(self.redis_url, max_connections=64)
        self._celery = make_celery(self.redis_url, queue)
        self._register = self.redis.register_script(_REGISTER_LUA)
        #: Resolves ``prompt`` labels and validates prompt variables (published versions are cached).
        self.prompts = PromptResolver(self.redis)

    # --- submit ---------------------------------------------------------------------------------

    def submit(self, job: CompletionJob | dict[str, Any], **overrides: Any) -> JobHandle:
        """Validate and enqueue ``job``; a second submit of the same id does not run it twice.

        A job with a ``prompt`` gets its label resolved to a version and its variables checked
        against that version's schema here, before anything is enqueued.
        """
        valid = validate_job(self.prompts.prepare(job_data(job, overrides)))
        if valid.submitted_at is None:
            valid.submitted_at = time.time()
        keys = JobKeys(valid.id)
        with submit_span(self.tracer, valid, self.queue) as span:
            fresh = self._register(
                keys=[keys.meta], args=[valid.tenant, valid.submitted_at, self.result_ttl_s, RESEND_AFTER_S]
            )
            if not fresh:
                if span.is_recording():
                    span.set_attribute("llmq.duplicate", True)
                return JobHandle(valid.id, False, self)
            payload = valid.model_dump(mode="json", exclude_none=True)
            try:
                self._celery.send_task(
                    TASK_NAME,
                    args=[payload],
                    task_id=valid.id,
                    queue=self.queue,
                    **send_options(payload, content=self._monitor_content),
                )
            except Exception:
                if fresh == 1:
                    self.redis.delete(keys.meta)  # let the caller retry the same id
                raise
        self.redis.hset(keys.meta, "sent", 1)
        return JobHandle(valid.id, True, self)

    # --- read -------------------------------------------------------------------------------------

    def get_result(self, job_id: str) -> CompletionResult | None:
        raw = self.redis.get(JobKeys(job_id).result)
        return CompletionResult.model_validate_json(raw) if raw else None

    def status(self, job_id: str) -> dict[str, str]:
        meta = self.redis.hgetall(JobKeys(job_id).meta)
        if not meta:
            raise JobNotFoundError(job_id)
        return {k.decode(): v.decode() for k, v in meta.items()}

    def result(self, job_id: str, timeout: float | None = None) -> CompletionResult:
        """Wait for the job's final result (raises :class:`ResultTimeoutError`); rides out a Redis restart."""
        with contextlib.suppress(*_REDIS_DOWN):  # else the stream below waits for Redis
            existing = self.get_result(job_id)
            if existing is not None:
                return existing
        for event in self.stream(job_id, timeout=timeout, deltas=False):
            if event.type in TERMINAL_EVENT_TYPES:
                stored = self._get_result_riding_out(job_id, timeout)
                if stored is not None:
                    return stored
                if event.result is not None:
                    return event.result
        raise ResultTimeoutError(f"job {job_id} has no result yet")

    def _get_result_riding_out(self, job_id: str, timeout: float | None) -> CompletionResult | None:
        deadline = time.monotonic() + (timeout if timeout is not None else 60.0)
        while True:
            try:
                return self.get_result(job_id)
            except _REDIS_DOWN:
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
        backoff = 0.1
        while True:
            try:
                yield from self._follow(keys, cursor)
                return
            except _REDIS_DOWN:
                # Redis restarted or failed over: wait (bounded by the timeout), then subscribe
                # again and replay from the next seq, so nothing is missed or repeated
                time.sleep(min(backoff, cursor.wait_s()))
                backoff = min(backoff * 2, 2.0)

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
                while True:
                    message = pubsub.get_message(timeout=cursor.wait_s())
                    if message is None:
                        break  # idle: look in the Stream for anything missed
                    out = cursor.live(message["data"])
                    if out is GAP:
                        break  # fill it from the Stream
                    if out is not None:
                        yield out
                    if cursor.done:
                        return
        finally:
            with contextlib.suppress(redis.RedisError):
                pubsub.close()

    def _replay(self, keys: JobKeys, from_seq: int) -> Iterator[StreamEvent]:
        start = f"{from_seq}-0"
        while True:
            entries = self.redis.xrange(keys.events, min=start, count=500)
            if not entries:
                return
            for _, fields in entries:
                yield parse_event(fields[b"e"])
            last_id = entries[-1][0].decode()
            start = "(" + last_id

    # --- control --------------------------------------------------------------------------------------

    def cancel(self, job_id: str) -> bool:
        """Ask for cancellation; True unless the job already finished. The worker aborts its call."""
        keys = JobKeys(job_id)
        pipe = self.redis.pipeline(transaction=False)
        pipe.exists(keys.result)
        pipe.set(keys.cancel, "1", ex=self.result_ttl_s)
        pipe.publish(CANCEL_CHANNEL, job_id)
        done, _, _ = pipe.execute()
        return not done

    def close(self) -> None:
        self.redis.close()
        self._celery.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

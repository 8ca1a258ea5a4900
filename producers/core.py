"""What :class:`~producers.client.Client` and :class:`~producers.aclient.AsyncClient` share.

Everything but the I/O: settings and key handling, job validation, the registration script and
its arguments, the Celery message, and parsing of results, status hashes and replayed events.
The two clients only add ``await`` (or not) around the same Redis calls, so they behave alike by
construction; ``tests/producers/test_client_parity.py`` runs the same scenarios on both.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import redis
from celery import Celery
from opentelemetry.trace import Tracer
from pydantic import ValidationError
from redis.typing import EncodableT, FieldT

from producers.catalog import LiveCatalog
from producers.errors import InvalidJobError, QueueFullError, in_cause_chain
from producers.onestep import OneStep
from producers.sentevents import SentEvents
from producers.settings import ProducerSettings, producer_settings
from producers.tracing import monitor_content, producer_tracer, send_options
from producers.watermark import MemoryWatermark, is_out_of_memory, queued_bytes
from workers.connections.brokerurl import amqp_conf, is_amqp
from workers.connections.jobmessage import sent_event
from workers.connections.redisurl import kombu_broker
from workers.connections.schedtransport import producer_transport
from workers.connections.schedule import REGISTER, queue_prefix, script
from workers.contract import (
    DEFAULT_QUEUE,
    TASK_NAME,
    CompletionJob,
    CompletionResult,
    JobKeys,
    StreamEvent,
    parse_event,
)
from workers.contract.capabilities import CapabilityError
from workers.contract.fieldnames import unknown_key_message
from workers.contract.presence import BATCH_INTAKE_KEY, WorkerPresence
from workers.contract.redaction import shown_url
from workers.contract.schedule import SCHED_HEADER, class_queue, sched_header

__all__ = [
    "CANCEL_CHANNEL",
    "REDIS_DOWN",
    "RESEND_AFTER_S",
    "SUBMIT_RIDE_OUT_S",
    "ClientCore",
    "make_celery",
    "models_error",
    "validate_job",
]

#: Must match ``workers.runtime.resources.CANCEL_CHANNEL`` (a test pins them together).
CANCEL_CHANNEL = "llmq:cancel"

#: Registers a job and admits it under its tenant's ``max_queued`` in one step (a refused submit
#: writes nothing): ``workers/connections/lua/register.lua``. 1 = newly registered; 0 = duplicate id
#: (already sent); 2 = registered earlier but its message was never confirmed sent (the producer died in
#: between) and is old enough: send it again (the worker's claim still runs a job once); a list
#: ``[-1, queued, max_queued, retry_after_s]`` = refused (:class:`QueueFullError`).
REGISTER_LUA = script(REGISTER)
#: A registration without a confirmed send is retried by a later submit after this long.
RESEND_AFTER_S = 30
#: Entries read from a job's replay Stream per round trip.
REPLAY_PAGE = 500

#: What a Redis restart or fail-over looks like to a client (redis.asyncio raises the same classes):
#: ``stream()`` and ``result()`` wait and reconnect on these, any other error is raised.
REDIS_DOWN: tuple[type[Exception], ...] = (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError)
#: Reconnect backoff of a consumer that lost Redis: first wait, growth, cap (seconds).
RECONNECT_FIRST_S, RECONNECT_CAP_S = 0.1, 2.0
#: How long ``result()`` keeps retrying to read a result whose terminal event it saw (no timeout given).
RESULT_RIDE_OUT_S = 60.0
#: How long ``submit()`` keeps retrying its registration through a Redis restart or fail-over.
SUBMIT_RIDE_OUT_S = 30.0


def next_backoff(wait_s: float) -> float:
    """The wait after ``wait_s``: doubled, capped at :data:`RECONNECT_CAP_S`."""
    return min(wait_s * 2, RECONNECT_CAP_S)


def validate_job(job: CompletionJob | dict[str, Any], **overrides: Any) -> CompletionJob:
    """A validated job (a dict is validated; overrides are applied and re-validated)."""
    try:
        if isinstance(job, CompletionJob):
            data = job.model_dump(exclude_unset=False) | overrides
        else:
            data = {**job, **overrides}
        return CompletionJob.model_validate(data)
    except ValidationError as exc:
        errors: list[dict[str, Any]] = [dict(e) for e in exc.errors(include_url=False)]
        for e in errors:  # a misspelt field names the one meant: "max_token: unknown key (did you mean 'max_tokens'?)"
            loc = e["loc"]
            if e["type"] == "extra_forbidden" and isinstance(loc, tuple) and loc:
                e["msg"] = unknown_key_message(CompletionJob, loc)
            cause = (e.get("ctx") or {}).get("error")
            if isinstance(cause, CapabilityError):  # named by its field, as a named provider's refusal is
                e.update(type="unsupported_parameter", loc=(cause.field,), msg=str(cause), input=cause.provider)
                e.pop("ctx", None)
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'job'}: {e['msg']}" for e in errors)
        raise InvalidJobError(f"invalid job: {problems}", errors) from None


def models_error(problems: list[dict[str, Any]]) -> InvalidJobError:
    """The ``InvalidJobError`` for model names the workers refuse (``producers/catalog.py``)."""
    text = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in problems)
    return InvalidJobError(f"invalid job: {text}", problems)


def make_celery(broker_url: str, queue: str = DEFAULT_QUEUE) -> Celery:
    """A send-only Celery app matching the worker's wire settings (JSON, same queue); a
    ``sentinel://`` URL (``workers/connections/redisurl.py``) reaches the master through the sentinels;
    an ``amqp://`` URL (``LLMQ_BROKER_URL``) sends to the quorum queue the worker declares
    (``workers/connections/brokerurl.py``)."""
    if is_amqp(broker_url):
        app = Celery("llmqueue-producer", broker=broker_url, set_as_current=False)
        app.conf.update(amqp_conf(queue))
    else:
        broker, options = kombu_broker(broker_url)
        # push_once: a send repeated after its reply was lost queues nothing (schedtransport.py)
        transport: dict[str, object] = {"visibility_timeout": 3600, "max_connections": 64, "push_once": True, **options}
        app = Celery("llmqueue-producer", broker=broker, set_as_current=False)
        # messages go into the queue's schedule (workers/connections/schedtransport.py)
        app.conf.update(
            task_default_queue=queue, broker_transport_options=transport, broker_transport=producer_transport(broker)
        )
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        task_send_sent_event=True,
        broker_connection_retry_on_startup=True,
        result_backend=None,
        task_ignore_result=True,
    )
    return app


class ClientCore:
    """The I/O-free half of a producer client: settings, keys, messages and parsing."""

    def __init__(
        self,
        redis_url: str | None = None,
        *,
        queue: str | None = None,
        result_ttl_s: int | None = None,
        settings: ProducerSettings | None = None,
        tracer: Tracer | None = None,
    ) -> None:
        base = settings or producer_settings()
        #: Explicit arguments win over ``settings``, which win over the environment.
        given = {"redis_url": redis_url, "queue": queue, "result_ttl_s": result_ttl_s}
        self.settings = ProducerSettings(**(base.model_dump() | {k: v for k, v in given.items() if v is not None}))
        self.redis_url = self.settings.redis_url
        self.queue = self.settings.queue
        self.result_ttl_s = self.settings.result_ttl_s
        #: Where jobs are sent: ``LLMQ_BROKER_URL``, else the Redis URL.
        self.broker_url = self.settings.broker
        self.celery = make_celery(self.broker_url, self.queue)
        self.celery.conf.task_send_sent_event = self.settings.task_events
        #: ``task-sent`` events in batches (None: Celery publishes each with its job).
        self.sent_events: SentEvents | None = None
        if self.settings.task_events and self.settings.task_events_flush_ms > 0:
            self.sent_events = SentEvents(self.celery, period_s=self.settings.task_events_flush_ms / 1000)
        #: A ``result()``/``stream()`` that has had nothing for this long logs a warning once when no
        #: live worker consumes the job's queue (``LLMQ_WORKER_CHECK_S``; None: never; the CLI says it itself).
        self.no_worker_notice_s: float | None = self.settings.worker_check_s
        #: The model names the workers of this queue accept, checked before anything is enqueued.
        self.catalog = LiveCatalog(
            self.queue, config_path=self.settings.config, default_model=self.settings.default_model
        )
        #: Submit spans (``producers/tracing.py``): the OTEL_* configured tracer, or a no-op.
        self.tracer = tracer or producer_tracer()
        self._monitor_content = monitor_content()
        #: Redis's memory against the high watermark (``producers/watermark.py``); a job queue on a
        #: Redis of its own (``LLMQ_BROKER_URL=redis://...``) is watched too: queued jobs live there.
        high, every = self.settings.redis_high_watermark, self.settings.redis_memory_check_s
        self.memory = MemoryWatermark(high, setting="LLMQ_REDIS_URL", interval_s=every)
        self.broker_memory: MemoryWatermark | None = None
        self._amqp = is_amqp(self.broker_url)
        if self.broker_url != self.redis_url and not self._amqp:
            self.broker_memory = MemoryWatermark(high, setting="LLMQ_BROKER_URL", interval_s=every)
        #: The queue's schedule is in this client's Redis: ``max_queued`` is checked as jobs register
        #: (not on RabbitMQ, nor with the queue on a Redis of its own: ``docs/scheduling.md``).
        self.admits = not self._amqp and self.broker_url == self.redis_url
        #: ... and its push script records the send in the job's registration in the same step
        #: (``workers/connections/lua/push.lua``): no round trip of the producer's own for it.
        self.sent_by_push = self.admits
        #: ... and a job can be registered and queued by one script (``producers/onestep.py``).
        self.one_step = OneStep(
            self.celery,
            self.queue,
            enabled=self.admits
            and not self._monitor_content
            and (not self.settings.task_events or self.sent_events is not None),
        )

    # --- submit ---------------------------------------------------------------------------------

    @staticmethod
    def stamped(job: dict[str, Any]) -> CompletionJob:
        """The validated job (prompts already resolved), with its submission time set."""
        valid = validate_job(job)
        if valid.submitted_at is None:
            valid.submitted_at = time.time()
        return valid

    def register_args(self, job: CompletionJob) -> tuple[list[str], list[EncodableT]]:
        """``(keys, args)`` of :data:`REGISTER_LUA` for ``job`` (a :meth:`stamped` one); the queue's
        schedule, where ``max_queued`` counts, when it is in this Redis (:attr:`admits`)."""
        if job.submitted_at is None:
            raise ValueError(f"job {job.id} is not stamped with its submission time")
        schedule = queue_prefix(self.queue) if self.admits else ""
        args: list[EncodableT] = [job.tenant, job.submitted_at, self.result_ttl_s, RESEND_AFTER_S, job.id]
        return [JobKeys(job.id).meta, schedule], args

    @staticmethod
    def registered(reply: Any, job: CompletionJob) -> int:
        """The register script's reply as 0, 1 or 2; raises :class:`QueueFullError` for a refusal."""
        if isinstance(reply, list):
            _, queued, limit, retry_after = reply
            raise QueueFullError(job.tenant, int(queued), int(limit), float(retry_after))
        return int(reply)

    def unregister_commands(self, pipe: Any, job: CompletionJob) -> None:
        """Queue on ``pipe`` what undoes a registration whose message could not be sent: the caller
        may retry the same id, and the job no longer counts toward ``max_queued``."""
        pipe.delete(JobKeys(job.id).meta)
        if self.admits:
            pipe.zrem(f"{queue_prefix(self.queue)}pending:{job.tenant}", job.id)

    def job_bytes(self, job: CompletionJob) -> int:
        """The Redis memory ``job`` will take once queued, estimated; 0 when no watermark needs it
        (no ``maxmemory``: the JSON is not made for nothing)."""
        marks = (self.memory, self.broker_memory)
        if not any(mark is not None and mark.sized for mark in marks):
            return 0
        return queued_bytes(len(job.model_dump_json(exclude_none=True)))

    def send(self, job: CompletionJob) -> None:
        """Send the job's Celery message (synchronous: kombu has no asyncio API). A Redis queue at
        ``maxmemory`` refusing it is :class:`RedisFullError`.

        On a Redis broker kombu's own publish retry is off and this method rides out a restart
        itself (for up to :data:`SUBMIT_RIDE_OUT_S`, like the registration): kombu retries a refused
        write as a lost connection, and when the refusal hits its declaration of the queue (a write:
        the binding) it closes the channel the publish goes on to use, which then fails with an
        ``AttributeError`` instead of the refusal. RabbitMQ keeps kombu's retry.

        On Redis the job goes into its class and tenant's place of the queue's schedule
        (``workers/connections/schedtransport.py``), on RabbitMQ to its class's queue.
        """
        payload = job.model_dump(mode="json", exclude_none=True)
        options = send_options(payload, content=self._monitor_content)
        if self._amqp:
            self._send_task(job, payload, options, retry=True)
            return
        deadline = time.monotonic() + SUBMIT_RIDE_OUT_S
        backoff = RECONNECT_FIRST_S
        while True:
            try:
                self._send_task(job, payload, options, retry=False)
                return
            except Exception as exc:
                if is_out_of_memory(exc):
                    raise (self.broker_memory or self.memory).full_error(refused_by="queueing the job") from exc
                if (
                    not in_cause_chain(exc, lambda e: isinstance(e, REDIS_DOWN))
                    or time.monotonic() + backoff >= deadline
                ):
                    raise
            time.sleep(backoff)
            backoff = next_backoff(backoff)

    def hands_to_batch(self, job: CompletionJob) -> bool:
        """Whether ``job`` goes straight to the provider batch lane (no queue message): it may wait
        (``batch``), runs no worker tools, its first model's provider has a batch API, its deadline
        leaves the room a live batcher announced (``WorkerPresence.batch_intake``)."""
        intake = self.catalog.batch_intake
        if intake is None or job.batch is None or job.worker_tools:
            return False
        chain = self.catalog.chain(job)
        if not chain or chain[0].partition(":")[0] not in BATCH_PROVIDERS:
            return False
        if job.deadline_s is None:
            return True
        if job.batch == "allow":
            return job.deadline_s > intake.allow_min_s
        return job.deadline_s >= intake.auto_min_s

    def intake_commands(self, pipe: Any, job: CompletionJob) -> None:
        """Queue on ``pipe`` what hands ``job`` to the batch lane (one round trip): its line (state
        ``new``, its payload), its id on the intake list, and the send recorded in its registration
        (last: a hand-off cut short is sent again by a later submit of the id)."""
        keys = JobKeys(job.id)
        pipe.hset(keys.batch, mapping={"state": "new", "job": job.model_dump_json(exclude_none=True)})
        pipe.expire(keys.batch, self.result_ttl_s)
        pipe.rpush(BATCH_INTAKE_KEY, job.id)
        if self.admits:  # no longer a registration waiting for its message
            pipe.zrem(f"{queue_prefix(self.queue)}pending:{job.tenant}", job.id)
        pipe.hset(keys.meta, mapping={"sent": "1", "queue": self.queue, "state": "batched"})

    def _send_task(self, job: CompletionJob, payload: dict[str, Any], options: dict[str, Any], *, retry: bool) -> None:
        self.celery.send_task(
            TASK_NAME,
            args=[payload],
            task_id=job.id,
            queue=self.queue_for(job),
            event_dispatcher=self.sent_events,
            retry=retry,
            headers={SCHED_HEADER: sched_header_of(job)},
            **options,
        )

    def in_one_step(self, job: CompletionJob) -> bool:
        """Whether ``job`` is registered and queued by one script (``producers/onestep.py``): not for
        the provider batch lane, and not once the ``task-sent`` events are closed."""
        if self.sent_events is not None and self.sent_events.closed:
            return False
        return not self.hands_to_batch(job) and self.one_step.usable(job)

    def announce_sent(self, job: CompletionJob, argsrepr: str) -> None:
        """The ``task-sent`` event ``send_task`` would have published with a one-step submit's message
        (batched: ``producers/sentevents.py``)."""
        if self.sent_events is not None:
            event = sent_event(
                task_id=job.id, task_name=TASK_NAME, queue=self.queue, argsrepr=argsrepr, kwargsrepr="{}"
            )
            self.sent_events.publish("task-sent", event, None)

    def queue_for(self, job: CompletionJob) -> str:
        """The broker queue of a job: the job queue; on RabbitMQ its class's queue."""
        return class_queue(self.queue, job.priority) if self._amqp else self.queue

    # --- read -------------------------------------------------------------------------------------

    @staticmethod
    def parse_result(raw: bytes | str | None) -> CompletionResult | None:
        return CompletionResult.model_validate_json(raw) if raw else None

    @staticmethod
    def parse_status(meta: Mapping[bytes | str, bytes | str]) -> dict[str, str] | None:
        """The job's metadata hash as text; ``None`` for a job nobody submitted (or expired)."""
        return {_text(k): _text(v) for k, v in meta.items()} if meta else None

    @staticmethod
    def replay_start(from_seq: int) -> str:
        return f"{from_seq}-0"

    @staticmethod
    def parse_page(
        entries: Sequence[tuple[bytes | str | None, Mapping[bytes | str, bytes | str] | None]],
    ) -> tuple[list[StreamEvent], str]:
        """One page of the job's replay Stream: its events, and where the next page starts."""
        last_id = entries[-1][0]
        if last_id is None:  # redis-py's types allow it; XRANGE entries always have an id
            raise ValueError("a replay Stream entry without an id")
        return [parse_event(fields[b"e"]) for _, fields in entries if fields is not None], "(" + _text(last_id)

    # --- control --------------------------------------------------------------------------------

    def cancel_commands(self, pipe: Any, job_id: str) -> None:
        """Queue a cancel on ``pipe`` (sync or asyncio pipeline): ``[result exists, set, publish]``."""
        keys = JobKeys(job_id)
        pipe.exists(keys.result)
        pipe.set(keys.cancel, "1", ex=self.result_ttl_s)
        pipe.publish(CANCEL_CHANNEL, job_id)

    def workers_of(self, presences: Sequence[WorkerPresence], queue: str | None = None) -> list[str]:
        """The ids of the workers (of ``presences``, what live workers publish) consuming ``queue``
        (this client's by default)."""
        queue = self.queue if queue is None else queue
        return sorted(p.worker for p in presences if queue in p.queues)

    def queue_of(self, meta: Mapping[str, str] | None) -> str:
        """The queue a job was sent to (its metadata's ``queue``, written with ``sent``), else this client's."""
        return (meta or {}).get("queue") or self.queue

    def sent_fields(self) -> dict[FieldT, EncodableT]:
        """What a producer writes into a job's metadata once its message is sent."""
        return {"sent": "1", "queue": self.queue}

    @staticmethod
    def no_worker_text(queue: str, presences: Sequence[WorkerPresence]) -> str:
        """ "no worker consumes queue Q", with the queues live workers do consume (a ``LLMQ_QUEUE`` that
        differs between producer and worker is the usual cause)."""
        others = sorted({q for p in presences for q in p.queues} - {queue})
        where = f"; the live workers consume {', '.join(repr(q) for q in others)}" if others else ""
        return f"no worker consumes queue {queue!r}{where} (start one: llmq worker, with the same LLMQ_QUEUE and LLMQ_REDIS_URL)"

    @staticmethod
    def last_event(
        entries: Sequence[tuple[Any, Mapping[bytes | str, bytes | str] | None]] | None,
    ) -> StreamEvent | None:
        """The event of an ``XREVRANGE ... COUNT 1`` reply: the job's latest, or None."""
        for _, fields in entries or ():
            if fields is not None:
                return parse_event(fields[b"e"])
        return None

    def no_worker_notice(
        self, job_id: str, meta: Mapping[str, str] | None, last: StreamEvent | None, presences: Sequence[WorkerPresence]
    ) -> str | None:
        """What a wait without a timeout says once (a log warning) when the job is still queued and no
        live worker consumes its queue; None when a worker took it or one could."""
        queue = self.queue_of(meta)
        if meta is None or last is not None or self.workers_of(presences, queue):
            return None
        return f"job {job_id} is still queued and {self.no_worker_text(queue, presences)}; still waiting"

    def unreachable_reason(self, what: str, exc: BaseException) -> str:
        """A wait's timeout (``what``) when Redis cannot be asked what is true of the job: the wait
        ended while Redis was down (it reconnected until then), which is the thing to fix."""
        return (
            f"{what}: Redis at {shown_url(self.redis_url)} cannot be reached now ({exc}); "
            "the job runs once Redis is back (start it, or check LLMQ_REDIS_URL)"
        )

    def timeout_reason(
        self,
        what: str,
        meta: Mapping[str, str] | None,
        last: StreamEvent | None,
        presences: Sequence[WorkerPresence],
    ) -> str:
        """A wait's timeout (``what``) with what is true of the job and of the queue it was sent to
        (``presences``: what the live workers publish)."""
        queue = self.queue_of(meta)
        workers = self.workers_of(presences, queue)
        if meta is None and last is None:
            return (
                f"{what}: no job with this id was submitted to this Redis ({shown_url(self.redis_url)}), "
                "or its records expired (LLMQ_RESULT_TTL_S)"
            )
        if last is None and not workers:
            return f"{what}: the job is still queued and {self.no_worker_text(queue, presences)}"
        if last is None:
            return f"{what}: the job is still queued; {len(workers)} live worker(s) consume queue {queue!r}, all busy"
        running = f"{what}: the job started (its last event is {last.type}, seq {last.seq}) and has not ended"
        return running if workers else f"{running}, and no live worker consumes queue {queue!r} now"

    def close(self) -> None:
        if self.sent_events is not None:
            self.sent_events.close()
        self.celery.close()


#: The providers whose batch APIs the workers use (their built-in entries: ``workers/jobs/batched.py``).
BATCH_PROVIDERS = frozenset({"openai", "anthropic"})


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def sched_header_of(job: CompletionJob) -> dict[str, object]:
    """The scheduling header of a job's Celery message (``workers/contract/schedule.py``)."""
    return sched_header(job.priority, job.tenant, job.concurrency_key, job.submitted_at)

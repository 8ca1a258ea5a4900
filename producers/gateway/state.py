"""What the request handlers share: settings, the queue client, the pub/sub hub and the metrics."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from redis.exceptions import RedisError
from starlette.requests import Request

from producers.aclient import AsyncClient
from producers.catalog import live_presences_async
from producers.client import default_redis_url
from producers.errors import RedisFullError
from producers.gateway.feed import FeedError, JobFeed, LiveHub
from producers.gateway.metrics import GatewayMetrics
from producers.gateway.settings import GatewaySettings, OnDisconnect
from producers.history import AsyncJobHistory
from workers.contract import JobKeys

#: ``tenant -> rows`` of ``{"queue", "class", "tenant", "depth"}`` (``class``/``tenant`` None: all of them),
#: on a Redis broker also ``running``, ``oldest_wait_s`` and, per tenant, ``parked`` and ``at_limit``.
QueueSource = Callable[[str], Awaitable[list[dict[str, Any]]]]
#: ``tenant -> {"month", "kill_ratio", "scopes": [...]}`` (the ledger's snapshot), or None.
BudgetSource = Callable[[str], Awaitable[dict[str, Any] | None]]


@dataclass
class Panels:
    """Where ``/v1/queues`` and ``/v1/budget`` read (``producers/gateway/panels.py``); None: the defaults."""

    queues: QueueSource | None = None
    budget: BudgetSource | None = None


__all__ = ["BudgetSource", "Gateway", "Panels", "QueueSource", "gateway_of"]

log = logging.getLogger("llmq.gateway")


class Gateway:
    """What the request handlers share: settings, the queue client, the pub/sub hub, metrics."""

    def __init__(
        self,
        settings: GatewaySettings,
        client: AsyncClient | None,
        metrics: GatewayMetrics,
        panels: Panels | None = None,
    ) -> None:
        self.settings = settings
        #: Where ``/v1/queues`` and ``/v1/budget`` read (``producers/gateway/panels.py``).
        self.panels = panels or Panels()
        self.metrics = metrics
        self._client = client
        self._owns_client = client is None
        self._hub: LiveHub | None = None
        self._history: AsyncJobHistory | None = None

    @property
    def history(self) -> AsyncJobHistory:
        """The job history (``GET /v1/jobs``, replay), read through the client's Redis."""
        if self._history is None:
            self._history = AsyncJobHistory(self.client.redis, days=self.settings.history_days)
        return self._history

    @property
    def client(self) -> AsyncClient:
        if self._client is None:
            raise RuntimeError("the gateway has not started (lifespan)")
        return self._client

    async def start(self) -> None:
        if self._client is None:
            s = self.settings
            self._client = AsyncClient(
                s.redis_url or default_redis_url(),
                queue=s.queue,
                result_ttl_s=s.result_ttl_s,
                max_connections=s.redis_max_connections,
            )
        self._hub = LiveHub(self._client.redis)
        await self._hub.start()

    async def close(self) -> None:
        if self._hub is not None:
            await self._hub.close()
            self._hub = None
        if self._owns_client and self._client is not None:
            await self._client.aclose()
            self._client = None

    def feed(self, job_id: str, *, from_seq: int = 0, skip_deltas: bool = False, needs_worker: bool = False) -> JobFeed:
        """One client's feed of a job's events. ``needs_worker`` (a chat completion, which its caller
        waits for): when the job has not started after ``LLMQ_WORKER_CHECK_S`` and no live worker
        consumes its queue, the job is cancelled and the feed ends with a 503 ``no_worker`` saying so,
        instead of the caller waiting for ``result_timeout_s`` without a word (checked again while the
        job waits; a job Redis would not let us cancel, full, is waited for)."""
        if self._hub is None:
            raise RuntimeError("the gateway has not started (lifespan)")
        s = self.settings
        watch = (self.client.settings.worker_check_s, lambda: self._no_worker(job_id)) if needs_worker else None
        return JobFeed(
            self.client.redis,
            self._hub,
            job_id,
            from_seq=from_seq,
            maxsize=s.sse_queue_size,
            idle_check_s=s.idle_check_s,
            skip_deltas=skip_deltas,
            on_catch_up=self.metrics.sse_catchups.inc,
            watch=watch,
        )

    async def _no_worker(self, job_id: str) -> FeedError | None:
        client = self.client
        meta = await client.status(job_id)
        last = client.last_event(await client.redis.xrevrange(JobKeys(job_id).events, count=1))
        presences = await live_presences_async(client.redis)
        if client.no_worker_notice(job_id, meta, last, presences) is None:
            return None
        text = client.no_worker_text(client.queue_of(meta), presences)
        try:
            await client.cancel(job_id)
        except RedisFullError as exc:
            # a full Redis also keeps workers from renewing their presence, and the job, which it
            # would not let us cancel, runs once a worker takes it: answering now (a 503 the SDKs
            # retry) would have the caller send it again and pay twice. The caller keeps waiting;
            # the watch checks again
            log.warning("job %s: %s, but Redis is full (the cancel was refused: %s); still waiting", job_id, text, exc)
            return None
        log.warning("job %s: %s; cancelled and answered 503", job_id, text)
        return FeedError(f"The job was not started: {text}. It was cancelled.", code="no_worker", retry_after_s=5)

    async def client_gone(self, job_id: str, policy: OnDisconnect, reason: str) -> None:
        """The client of a running job left (or was dropped): cancel the job unless told to finish it."""
        if policy != "cancel":
            log.info("client of job %s gone (%s); the job runs to its end", job_id, reason)
            return
        try:
            if await self.client.cancel(job_id):
                self.metrics.disconnect_cancels.inc()
                log.info("client of job %s gone (%s); job cancelled", job_id, reason)
        except (RedisError, RedisFullError) as exc:
            log.warning("could not cancel job %s after its client left: %s", job_id, exc)


def gateway_of(request: Request) -> Gateway:
    gateway: Gateway = request.app.state.gateway
    return gateway

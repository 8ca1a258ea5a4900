"""Everything a worker process builds once and shares between its jobs.

Built when the worker starts (Celery's ``worker_init``, see ``workers/runtime/app.py``) or on the
first job, after the pool is set up and never at import time: one HTTP client sized to the
concurrency, one Redis client over a *blocking* connection pool (redis-py 8's default pool raises
instead of waiting once 100 connections are out, which a worker running more jobs than that hits at
once), the providers, the routes config, and the cancel watcher.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import socket
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import redis
from opentelemetry.trace import Tracer
from prometheus_client import CollectorRegistry
from redis.backoff import NoBackoff
from redis.retry import Retry

from workers.accounting.ledger import Ledger, ReplicaWait, configured_ledger
from workers.accounting.pricehandover import handed_over
from workers.accounting.prices import PriceBook, price_sources
from workers.accounting.settlekeeper import SettleKeeper, default_journal
from workers.accounting.tokens import TokenCounter
from workers.connections.redisclient import redis_client
from workers.contract.catalog import ModelCatalog, UnknownModelError
from workers.contract.providers import PROVIDERS_KEY, ProviderSpec, provider_infos
from workers.guards.shared import SharedGuards
from workers.jobs.batched import intake_of
from workers.jobs.batchstate import BatchStore
from workers.jobs.catalog import worker_catalog
from workers.jobs.events import flush_batcher
from workers.jobs.flushbatch import FlushBatcher
from workers.jobs.heartbeat import ClaimHeartbeat
from workers.jobs.history import HistoryWriter
from workers.jobs.responsecache import ResponseCache, build_cache_metrics
from workers.jobs.store import JobStore
from workers.jobs.webhooks import WebhookQueue
from workers.llm.httpclient import HTTPClient, HTTPSettings
from workers.llm.registry import ProviderRegistry, build_registry
from workers.llm.tracing import NO_TRACER
from workers.routes import LLMQConfig, load_config
from workers.runtime.batcher import Batcher
from workers.runtime.batchmetrics import BatchCollector
from workers.runtime.presence import PresencePublisher
from workers.runtime.providerenv import provider_environment
from workers.runtime.schedmetrics import schedule_collector
from workers.runtime.telemetry import (
    BreakerCollector,
    RateAdmissionsCollector,
    ReplicaWaitCollector,
    WorkerMetrics,
    build_worker_metrics,
)
from workers.runtime.tracing import build_tracer_provider, tracing_configured
from workers.runtime.webhooks import WebhookDeliverer, WebhookMetrics
from workers.settings import Settings
from workers.tools.publish import RegistryPublisher
from workers.tools.toolbox import Toolbox

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

__all__ = ["CANCEL_CHANNEL", "CancelWatcher", "WorkerResources", "build_ledger", "redis_client_for"]

log = logging.getLogger("llmq.worker")

#: Producers PUBLISH a job id here after setting its cancel key; workers abort its upstream read.
CANCEL_CHANNEL = "llmq:cancel"


def redis_client_for(settings: Settings, max_connections: int | None = None) -> redis.Redis:
    """The worker's Redis client (plain URL or Sentinel, ``workers/connections/redisclient.py``)."""
    return redis_client(
        settings.redis_url,
        max_connections=max_connections or settings.concurrency + 10,
        socket_keepalive=True,
        health_check_interval=30,
    )


#: Cancels a watcher remembers for jobs with no hook here (most are other workers' jobs).
RECENT_CANCELS = 4096


class CancelWatcher:
    """Listens on :data:`CANCEL_CHANNEL` and calls the abort hook of a job running here.

    A cancel heard for a job with no hook yet is remembered (the last :data:`RECENT_CANCELS`): a job
    cancelled between its claim (which refuses a job cancelled before it) and the registration of its
    first call's hook is aborted as it registers, instead of calling on until its answer ends (seen:
    a job cancelled right after its ``start`` event ran its 60 s call to the end)."""

    def __init__(self, client: redis.Redis) -> None:
        self._client = client
        self._hooks: dict[str, Callable[[], None]] = {}
        self._recent: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def register(self, job_id: str, abort: Callable[[], None]) -> None:
        with self._lock:
            self._hooks[job_id] = abort
            heard = job_id in self._recent
            if heard:
                del self._recent[job_id]
        if heard:  # its cancel came before its hook
            with contextlib.suppress(Exception):
                abort()

    def unregister(self, job_id: str) -> None:
        with self._lock:
            self._hooks.pop(job_id, None)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="llmq-cancel-watcher", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            pubsub = self._client.pubsub(ignore_subscribe_messages=True)
            try:
                pubsub.subscribe(CANCEL_CHANNEL)
                while not self._stop.is_set():
                    message = pubsub.get_message(timeout=0.25)
                    if message and message.get("type") == "message":
                        self._fire(message["data"])
            except redis.RedisError as exc:
                log.warning("cancel watcher lost Redis (%s); reconnecting", exc)
                self._stop.wait(1.0)
            finally:
                with contextlib.suppress(Exception):
                    pubsub.close()

    def _fire(self, raw: bytes | str) -> None:
        job_id = raw.decode() if isinstance(raw, bytes) else raw
        with self._lock:
            hook = self._hooks.get(job_id)
            if hook is None:
                recent = self._recent
                recent[job_id] = None
                recent.move_to_end(job_id)
                if len(recent) > RECENT_CANCELS:
                    recent.popitem(last=False)
        if hook is not None:
            with contextlib.suppress(Exception):
                hook()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(3)


def build_ledger(settings: Settings, config: LLMQConfig, client: redis.Redis | None = None) -> Ledger:
    """The ledger with its defaults: ``LLMQ_MONTHLY_BUDGET_USD`` wins over ``[budget] monthly_usd``.

    Its Redis client retries a failed command once, without backoff: an unreachable ledger must
    refuse quickly (fail closed), not after redis-py's default ~13 s of retries.
    """
    if client is None:
        client = redis_client(
            settings.redis_url, max_connections=20, retry=Retry(NoBackoff(), 1), socket_connect_timeout=2
        )
    replicas = settings.ledger_replicas
    return configured_ledger(
        client,
        settings,
        config,
        lease_s=float(settings.task_time_limit),
        replica_wait=ReplicaWait(replicas, settings.ledger_wait_ms) if replicas else None,
    )


def default_model_ids(catalog: ModelCatalog, default_model: str) -> list[str]:
    """The ``provider:model`` ids the default model (an id, route alias or bare name) reaches; none
    when the catalog does not know it (its jobs then fail, as they would without this)."""
    with contextlib.suppress(UnknownModelError):
        return catalog.resolve(default_model)
    return []


def publish_providers(client: redis.Redis, specs: Mapping[str, ProviderSpec]) -> None:
    """Tell producers which providers this worker has (names, types, accepted parameters; never a
    key): ``PROVIDERS_KEY`` in ``workers/contract/providers.py``. Each worker writes its own entries
    at start; a name configured differently on two workers shows the last one started."""
    infos = provider_infos(specs)
    try:
        client.hset(PROVIDERS_KEY, mapping={name: info.model_dump_json() for name, info in infos.items()})
    except redis.RedisError as exc:  # producers then check less at submit; the worker checks every job
        logging.getLogger("llmq.worker").warning("could not publish the provider list: %s", exc)


@dataclass
class WorkerResources:
    settings: Settings
    redis: redis.Redis
    http: HTTPClient
    registry: ProviderRegistry
    config: LLMQConfig
    store: JobStore
    counter: TokenCounter
    prices: PriceBook
    ledger: Ledger
    metrics: WorkerMetrics
    #: The model names this worker accepts (workers/jobs/catalog.py), published with its presence.
    catalog: ModelCatalog
    cancel_watcher: CancelWatcher | None = None
    #: Breaker, not-before times and RPM/TPM buckets shared with every worker (workers/guards/shared.py).
    guards: SharedGuards | None = None
    #: Renews the claims of the jobs running here (proof of life; workers/jobs/heartbeat.py).
    heartbeat: ClaimHeartbeat | None = None
    #: The worker tools this process imported, and the thread publishing them to Redis.
    tools: Toolbox | None = None
    tools_publisher: RegistryPublisher | None = None
    #: Keeps this worker's queue and catalog in Redis for producers (workers/runtime/presence.py).
    presence: PresencePublisher | None = None
    #: Delivers the webhooks of ended jobs, off the jobs' path (workers/runtime/webhooks.py).
    deliverer: WebhookDeliverer | None = None
    #: Answers of jobs that ask to be cached, and the leads of their single flights.
    response_cache: ResponseCache | None = None
    #: The jobs' event flushes, pipelined together (``LLMQ_BATCH_FLUSHES``; its thread starts on the first flush).
    flusher: FlushBatcher | None = None
    #: Moves the provider batches on (workers/runtime/batcher.py); started by the worker, not by a test's runner.
    batcher: Batcher | None = None
    extras: dict[str, object] = field(default_factory=dict)
    #: The process's span exporter pipeline, from the OTEL_* variables (None: tracing is off).
    tracer_provider: TracerProvider | None = None

    @functools.cached_property
    def tracer(self) -> Tracer:
        """The tracer jobs use: the provider's, or a no-op (``workers/runtime/tracing.py``)."""
        provider = self.tracer_provider
        return NO_TRACER if provider is None else provider.get_tracer("llmq.worker")

    @classmethod
    def build(
        cls,
        settings: Settings,
        *,
        watch_cancels: bool = True,
        provider_env: Mapping[str, str] | None = None,
        registry: CollectorRegistry | None = None,
    ) -> WorkerResources:
        config = load_config(settings.config)
        # first: a tool module that does not import stops the worker before it takes any job
        tools = Toolbox.build(settings.tools, config.tools)
        client = redis_client_for(settings)
        http = HTTPClient(
            HTTPSettings(
                max_connections=settings.concurrency,
                connect_timeout=settings.http_connect_timeout,
                read_timeout=settings.http_read_timeout,
                pool_timeout=settings.http_read_timeout,
                request_timeout=settings.http_request_timeout,
                max_response_bytes=settings.http_max_response_bytes,
                http2=settings.http2,
            )
        )
        # before anything starts a thread: a provider entry that cannot work stops the worker here
        try:
            env = provider_environment(os.environ if provider_env is None else provider_env)
            providers = build_registry(http, env, config.providers)
        except BaseException:
            http.close()
            client.close()
            raise
        # compacting: the bundled encodings count with CompactBPE (tiktoken's counts from a ~7 MB table,
        # not tiktoken's ~43 MB Rust tokenizer); any other drops its Python merge ranks as it loads
        counter = TokenCounter(types={name: spec.type for name, spec in config.providers.items()}, compact=True)
        # what genai-prices says of the default model and the providers' names, from what llmq worker
        # handed over (workers/accounting/pricehandover.py), else from genai-prices' data (~7 MB)
        prices = PriceBook(
            config.models,
            unpriced=config.budget.unpriced,
            sources=price_sources(config.providers),
            genai=handed_over(),
        )
        with contextlib.suppress(Exception):  # warm genai-prices' data (~0.4 s) before the first job
            prices.lookup(settings.default_model)
        try:  # a [model_families] entry naming no provider stops the worker here
            catalog = worker_catalog(config, providers, prices, settings.default_model)
        except BaseException:
            providers.close()
            http.close()
            client.close()
            raise
        # only the default model's encodings now (from the bundled files: offline), before any job
        # runs; another encoding loads on the first job that counts with it (~4-8 MB each)
        counter.preload(counter.encodings_for(default_model_ids(catalog, settings.default_model)))
        ledger_client = redis_client(
            settings.redis_url,
            max_connections=settings.concurrency + 10,
            socket_connect_timeout=2,
            retry=Retry(NoBackoff(), 1),
        )
        metrics = build_worker_metrics(
            registry or CollectorRegistry(), schedule=schedule_collector(settings, config, client)
        )
        watcher = CancelWatcher(client) if watch_cancels else None
        if watcher is not None:
            watcher.start()
        guards = SharedGuards(client, config)
        guards.start()
        store = JobStore(
            client,
            result_ttl_s=settings.result_ttl_s,
            claim_lease_s=settings.claim_lease_s,
            history=HistoryWriter(settings.history_days, traced=tracing_configured())
            if settings.history_days
            else None,
            webhooks=WebhookQueue(config.webhooks, keep_s=settings.result_ttl_s),
        )
        deliverer = WebhookDeliverer(
            client,
            config.webhooks,
            metrics=WebhookMetrics(metrics.registry),
            allow_networks=[n.strip() for n in settings.webhook_allow_networks.split(",") if n.strip()],
        )
        deliverer.start()
        heartbeat = ClaimHeartbeat(store, interval=settings.heartbeat_s)
        heartbeat.start()
        publish_providers(client, config.providers)
        worker_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        publisher = None
        if len(tools.registry):
            publisher = RegistryPublisher(client, worker_id, tools.infos())
            publisher.start()
        presence = PresencePublisher(client, worker_id, [settings.queue], catalog, batch_intake=intake_of(config.batch))
        presence.start()
        lease_stats = guards.leases.stats
        metrics.registry.register(RateAdmissionsCollector(lambda: (lease_stats.local, lease_stats.calls)))
        metrics.registry.register(BreakerCollector(guards.breakers_open))
        if config.batch.enabled:
            metrics.registry.register(BatchCollector(BatchStore(client)))
        ledger = build_ledger(settings, config, ledger_client)
        if settings.ledger_batch:  # each job's reserve and settle share round trips with the others'
            ledger.batch_scripts(lambda script: FlushBatcher(ledger_client, script))
        ledger.keeper = SettleKeeper(
            ledger.settle_now,
            release=ledger.release_now,
            journal=Path(settings.settle_journal) if settings.settle_journal else default_journal(settings.redis_url),
            max_pending=settings.settle_keep_max,
            registry=metrics.registry,
        )
        ledger.keeper.replay()  # what a worker that stopped while Redis refused settlements left
        if ledger.replica_wait is not None:
            metrics.registry.register(ReplicaWaitCollector(ledger.replica_wait))
        return cls(
            settings=settings,
            redis=client,
            http=http,
            registry=providers,
            config=config,
            store=store,
            counter=counter,
            prices=prices,
            ledger=ledger,
            metrics=metrics,
            catalog=catalog,
            cancel_watcher=watcher,
            guards=guards,
            heartbeat=heartbeat,
            tools=tools,
            tools_publisher=publisher,
            presence=presence,
            deliverer=deliverer,
            flusher=flush_batcher(client) if settings.batch_flushes else None,
            response_cache=ResponseCache(
                client,
                max_bytes=config.cache.max_bytes,
                max_entry_bytes=config.cache.max_entry_bytes,
                lead_ttl_ms=settings.task_time_limit * 1000,
                metrics=build_cache_metrics(metrics.registry),
            ),
            tracer_provider=build_tracer_provider(),
        )

    def close(self) -> None:
        if self.batcher is not None:
            self.batcher.stop()
        if self.deliverer is not None:
            self.deliverer.stop()
        if self.tools_publisher is not None:
            self.tools_publisher.stop()
        if self.presence is not None:
            self.presence.stop()
        if self.heartbeat is not None:
            self.heartbeat.stop()
        if self.tracer_provider is not None:
            self.tracer_provider.shutdown()  # flushes the spans still batched
        if self.cancel_watcher is not None:
            self.cancel_watcher.stop()
        if self.guards is not None:
            self.guards.stop()
        if self.flusher is not None:
            self.flusher.close()  # before the client: what is queued still goes out
        self.ledger.close_batches()  # before the keeper's last try, which then goes direct
        if self.ledger.keeper is not None:
            self.ledger.keeper.close()  # a last try; what Redis still refuses goes to the journal
        self.registry.close()
        self.http.close()
        self.redis.close()
        self.redis.connection_pool.disconnect()
        self.ledger.client.close()

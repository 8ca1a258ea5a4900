"""What a job needs from its worker process, as the pipeline sees it.

The runtime builds the process's resources once and shares them between jobs
(``workers/runtime/resources.py``, :class:`~workers.runtime.resources.WorkerResources`, which
satisfies :class:`JobResources`). The pipeline describes here what it uses of them, so the jobs
room never imports the runtime that runs it; a test or an embedding can hand it any object of
this shape. A new resource the pipeline uses is added to both.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import redis
from opentelemetry.trace import Tracer

from workers.accounting.ledger import Ledger
from workers.accounting.metrics import UsageMetrics
from workers.accounting.prices import PriceBook
from workers.accounting.tokens import TokenCounter
from workers.contract import CompletionResult
from workers.contract.catalog import ModelCatalog
from workers.guards.shared import SharedGuards
from workers.jobs.decisions import DecisionMetrics
from workers.jobs.flushbatch import FlushBatcher
from workers.jobs.heartbeat import ClaimHeartbeat
from workers.jobs.responsecache import ResponseCache
from workers.jobs.store import JobStore
from workers.llm.registry import ProviderRegistry
from workers.routes import LLMQConfig
from workers.settings import Settings
from workers.tools.toolbox import Toolbox

__all__ = ["CancelHooks", "JobMetricsSink", "JobRecorder", "JobResources"]


class CancelHooks(Protocol):
    """Calls a running job's abort hook when its cancel arrives (the runtime's cancel watcher)."""

    def register(self, job_id: str, abort: Callable[[], None]) -> None: ...

    def unregister(self, job_id: str) -> None: ...


class JobRecorder(Protocol):
    def record(self, result: CompletionResult) -> None: ...

    def started(self, priority: str, queued_s: float | None) -> None: ...

    def ended(self, priority: str) -> None: ...


class JobMetricsSink(Protocol):
    @property
    def jobs(self) -> JobRecorder: ...

    @property
    def usage(self) -> UsageMetrics: ...

    @property
    def decisions(self) -> DecisionMetrics: ...


class JobResources(Protocol):
    """The process's shared resources a job runs with (read-only from the pipeline's side)."""

    @property
    def settings(self) -> Settings: ...

    @property
    def redis(self) -> redis.Redis: ...

    @property
    def registry(self) -> ProviderRegistry: ...

    @property
    def config(self) -> LLMQConfig: ...

    @property
    def store(self) -> JobStore: ...

    @property
    def counter(self) -> TokenCounter: ...

    @property
    def prices(self) -> PriceBook: ...

    @property
    def ledger(self) -> Ledger: ...

    @property
    def metrics(self) -> JobMetricsSink: ...

    @property
    def catalog(self) -> ModelCatalog:
        """The model names this worker accepts: what resolves a job's aliases and bare names."""
        ...

    @property
    def tracer(self) -> Tracer: ...

    @property
    def cancel_watcher(self) -> CancelHooks | None: ...

    @property
    def guards(self) -> SharedGuards | None: ...

    @property
    def heartbeat(self) -> ClaimHeartbeat | None: ...

    @property
    def response_cache(self) -> ResponseCache | None: ...

    @property
    def tools(self) -> Toolbox | None: ...

    @property
    def flusher(self) -> FlushBatcher | None:
        """Batches the event flushes of the process's jobs (None: each flush is a direct call)."""
        ...

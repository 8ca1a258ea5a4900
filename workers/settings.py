"""Worker and producer settings, from ``LLMQ_*`` environment variables (and ``LLMQ_CONFIG``).

Nothing is read at import time: call :func:`get_settings` (or build :class:`Settings` yourself
with explicit values, which is what tests do). Provider API keys are deliberately *not* settings:
each provider reads its own official variable (``OPENAI_API_KEY`` ...) from the worker's
environment when the worker process starts, so a key can never be serialized with the settings.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from workers.connections.brokerurl import check_broker_url
from workers.connections.redisurl import check_redis_url

__all__ = ["Settings", "get_settings"]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LLMQ_", extra="ignore", frozen=True)

    #: Broker, event streams, results and the ledger.
    redis_url: Annotated[str, AfterValidator(check_redis_url)] = "redis://127.0.0.1:6379/0"
    #: Where the job queue lives when not in Redis: an ``amqp://`` RabbitMQ URL, declared as a quorum
    #: queue (``LLMQ_BROKER_URL``); unset, the Redis URL. Results, events, the ledger and the guards
    #: stay in Redis either way.
    broker_url: Annotated[str | None, AfterValidator(check_broker_url)] = None
    #: Celery queue jobs are sent to.
    queue: str = "llmq"

    # --- worker process ------------------------------------------------------------------------
    pool: Literal["gevent", "threads"] = "gevent"
    #: Concurrent jobs per worker process; sizes the HTTP and Redis pools too.
    concurrency: int = Field(default=100, ge=1, le=2000)
    #: None = 2 for gevent (avoids the refill stall), 1 for threads (notes §2).
    prefetch_multiplier: int | None = Field(default=None, ge=1)
    #: Seconds without proof of life before an unacked job is redelivered. Workers refresh the
    #: broker entries of the jobs they hold every ``heartbeat_s`` (workers/runtime/broker.py), so
    #: this need not exceed the longest job: it is how long a dead worker's jobs wait.
    visibility_timeout: int = Field(default=15, ge=1)
    #: Hard per-job limit enforced by the gevent pool; above the provider read timeout.
    task_time_limit: int = Field(default=900, ge=10)
    #: On SIGTERM (``llmq worker``), the most seconds running jobs get to finish before they are handed
    #: back; the worker stops as soon as none runs (workers/runtime/shutdown.py).
    soft_shutdown_timeout: float = 60.0
    #: Lease of the per-job claim that keeps two workers from running one job at once; renewed
    #: every ``heartbeat_s`` while the job runs, so a dead worker's claim lapses within this.
    claim_lease_s: int = Field(default=15, ge=1)
    #: Seconds between heartbeats (broker entries and claims); None = a fifth of the shorter of
    #: the visibility timeout and the claim lease.
    heartbeat_interval: float | None = Field(default=None, gt=0)
    #: How long a running job waits for Redis to come back (reconnecting with backoff) before it
    #: gives up; it then runs again from the start.
    redis_outage_s: float = Field(default=300.0, ge=0)
    #: How long a job whose claim, start or first reservation Redis refuses at ``maxmemory`` waits
    #: in the worker for Redis to take writes again; past that it goes back to the queue (it is
    #: left unacknowledged, restored once Redis takes writes) and holds no slot while Redis is full.
    #: A job that already paid a call waits in the worker for as long as Redis stays full.
    redis_full_wait_s: float = Field(default=5.0, ge=0)
    #: Where a worker that stops while Redis still refuses settlements writes them (JSON lines), to
    #: settle them at its next start; "" = ``$XDG_STATE_HOME/llmq/unsettled.jsonl`` (or ``~/.local/state``).
    settle_journal: str = ""
    #: Most refused settlements a worker keeps to retry; a job whose settlement finds the keeper
    #: full retries it itself before it ends.
    settle_keep_max: int = Field(default=10_000, ge=1)

    # --- streaming and results ------------------------------------------------------------------
    #: Deltas are buffered until this much time passed since the first unflushed one...
    coalesce_ms: float = Field(default=100.0, ge=0)
    #: ...or this many characters are buffered, whichever comes first.
    coalesce_chars: int = Field(default=512, ge=1)
    #: The event flushes of all the jobs a process runs share Redis round trips (one pipelined
    #: batch at a time, each job still gets its own reply: ``workers/jobs/flushbatch.py``).
    batch_flushes: bool = True
    #: The ledger's reservations and settlements of all the jobs a process runs share Redis round
    #: trips the same way (``Ledger.batch_scripts``; not with ``LLMQ_LEDGER_REPLICAS``).
    ledger_batch: bool = True
    #: Approximate cap of each job's replay stream (XADD MAXLEN ~).
    events_maxlen: int = Field(default=10_000, ge=10)
    #: Seconds results, replay streams and job metadata are kept.
    result_ttl_s: int = Field(default=86_400, ge=60)
    #: Whole days every ended job stays in the history (``llmq jobs``, dead letters, replay) after the
    #: day it ended; 0 turns the history off (``workers/contract/history.py``).
    history_days: int = Field(default=7, ge=0, le=366)
    #: Comma-separated networks (CIDR) webhook deliveries may reach although they are loopback,
    #: private or link-local (added to ``[webhooks] allow_networks``); e.g. ``127.0.0.0/8`` on a dev box.
    webhook_allow_networks: str = ""

    #: Net new container objects between two young garbage collections in a worker (Python's default
    #: is 700; 0 keeps it). Jobs' objects live as long as the job: 700 re-scans the running jobs'
    #: objects ~every other job (workers/runtime/collector.py).
    gc_young_threshold: int = Field(default=20_000, ge=0, le=10_000_000)
    #: Serve this worker process's Prometheus metrics on this port (one port per process).
    metrics_port: int | None = Field(default=None, ge=1, le=65535)
    #: Celery task events (what Flower shows). Sent in batches (below) their cost is within measurement
    #: noise (bench/RESULTS-queue.md); off, Flower can still turn them on at run time (``enable_events``).
    task_events: bool = True
    #: Task events are kept and sent in batches (one ``task.multi`` message per flush) at least
    #: this often, in milliseconds; 0: each event its own publish (workers/runtime/taskevents.py).
    task_events_flush_ms: int = Field(default=250, ge=0, le=5000)
    #: A Redis broker's acks leave Redis in batches, at most this many milliseconds after a job
    #: ended (its slot is free at once); 0: one round trip per ack (workers/runtime/broker.py).
    ack_flush_ms: int = Field(default=50, ge=0, le=1000)

    # --- logs and traces (tracing itself is configured by the standard OTEL_* variables) ------
    #: ``json`` (one object per line, with trace ids) or ``text``; default: JSON unless on a terminal.
    log_format: Literal["json", "text"] | None = None
    #: Share of *successful* jobs whose lines are logged, decided per trace; failures always are.
    log_sample: float = Field(default=1.0, ge=0.0, le=1.0)
    #: Jobs running at least this long are always logged.
    log_slow_s: float = Field(default=30.0, ge=0.0)
    #: Record (redacted) message content on ``chat`` spans: off unless turned on.
    trace_content: bool = False
    #: Show full job arguments (message text, variables) in Celery task events and Flower;
    #: off: they show ``monitor_repr`` (ids, model, tenant, sizes).
    monitor_content: bool = False

    # --- HTTP to providers ----------------------------------------------------------------------
    http_connect_timeout: float = 5.0
    http_read_timeout: float = 120.0
    #: Whole-request deadline of an upstream call (headers and the entire body, streamed or not).
    http_request_timeout: float = Field(default=600.0, gt=0)
    #: Largest upstream response accepted; a stream line is capped at 1 MiB on top of this.
    http_max_response_bytes: int = Field(default=64 * 1024 * 1024, ge=1024 * 1024)
    http2: bool = True

    # --- routing, budget ------------------------------------------------------------------------
    #: TOML file with routes, per-model limits, prices and budgets (issue: resilience).
    config: str | None = None
    #: What a bare ``default`` model resolves to when no config file says otherwise.
    default_model: str = "openai:gpt-4o-mini"
    monthly_budget_usd: float | None = Field(default=None, ge=0)
    #: Replicas a ledger reservation or settlement waits for (``WAIT``) before the job goes on; None
    #: = 1 when ``LLMQ_REDIS_URL`` is Sentinel, else 0 (no wait). Fewer in time: logged and counted
    #: (``llmq_ledger_replica_waits_total{outcome="short"}``), never a job failure.
    ledger_wait_replicas: int | None = Field(default=None, ge=0)
    #: How long that wait may take, in milliseconds (each settle waits this long while no replica answers).
    ledger_wait_ms: int = Field(default=250, ge=1)

    # --- prompts --------------------------------------------------------------------------------
    #: The prompt library (``<name>/v<N>.yaml`` + ``golden/``) the ``llmq prompts`` commands use.
    prompts_dir: str = "./prompts"
    #: Cap on a job's rendered prompt (all messages, in characters): a clear error past it.
    prompt_max_chars: int = Field(default=1_000_000, ge=1_000)

    # --- tools ------------------------------------------------------------------------------------
    #: Comma-separated import paths of tool modules the worker imports at start (their ``@tool``
    #: functions become worker tools); the routes file's ``[tools] modules`` adds to them.
    tools: str = ""

    @property
    def heartbeat_s(self) -> float:
        if self.heartbeat_interval is not None:
            return self.heartbeat_interval
        return max(0.2, min(self.visibility_timeout, self.claim_lease_s) / 5)

    @property
    def ledger_replicas(self) -> int:
        """How many replicas the ledger waits for (``ledger_wait_replicas``, or its Sentinel default)."""
        if self.ledger_wait_replicas is not None:
            return self.ledger_wait_replicas
        return 1 if self.redis_url.strip().lower().startswith("sentinel://") else 0

    @property
    def effective_prefetch(self) -> int:
        if self.prefetch_multiplier is not None:
            return self.prefetch_multiplier
        # 1 for every pool: a worker holds no more jobs than it can run, so a burst spreads over
        # the workers instead of queueing behind one worker's long streams; the refill stall that
        # once made gevent prefetch 2 is gone (workers/runtime/broker.py, Poller)
        return 1


def get_settings(**overrides: Any) -> Settings:
    """Settings from the environment, with explicit overrides winning (any field, by name)."""
    return Settings(**overrides)

"""Worker metrics and logging: built per process on an injected registry, never at import.

=================================  =========  ==================================================
``llm_requests_total``             counter    ``{model, status}`` upstream attempts, ok | error
``llm_retries_total``              counter    ``{model, error_type}`` attempts that were retried
``llm_fallbacks_total``            counter    ``{from_model, to_model}``
``llm_ttft_seconds``               histogram  ``{model}`` job start to first delta
``llm_job_duration_seconds``       histogram  ``{model}`` job run time on the worker
``llmq_jobs_total``                counter    ``{status}`` succeeded | failed | cancelled
``llmq_jobs_running``              gauge      ``{priority}`` jobs this process runs, by class
``llmq_queue_wait_seconds``        histogram  ``{priority}`` submit to start of a job's first run
``llmq_queue_*``                   gauges     the schedule, read from Redis on each scrape
                                              (``workers/runtime/schedmetrics.py``)
``llmq_rate_admissions_total``     counter    ``{via}`` lease | redis: RPM/TPM admissions
``llmq_ledger_replica_waits_total`` counter   ``{outcome}`` acked | short: ledger writes whose
                                              WAIT reached the replicas in time (only when
                                              the ledger waits: Sentinel or
                                              ``LLMQ_LEDGER_WAIT_REPLICAS``)
``llm_skips_total``                counter    ``{model, reason}`` models passed over untried:
                                              window | budget | breaker_open |
                                              breaker_probe_busy | too_large | check
``llm_waits_total``                counter    ``{model, reason}`` in-worker holds before a request:
                                              not_before (a shared 429 hold) | rate_limit
``llm_wait_seconds_total``         counter    ``{model, reason}`` seconds slept in those holds
``llm_breaker_transitions_total``  counter    ``{model, state}`` breaker moves made by this worker
``llm_breaker_open``               gauge      ``{model}`` 1 while the shared breaker is not closed
``llmq_requeues_total``            counter    ``{reason}`` jobs re-queued with a countdown
``llm_tool_calls_total``           counter    ``{tool, outcome}`` tool calls: ok | error | timeout |
                                              invalid | unknown | cancelled | interrupted
``gen_ai_client_operation_duration_seconds``    histogram  per HTTP attempt (GenAI semconv)
``gen_ai_client_time_to_first_chunk_seconds``   histogram  per streamed attempt
``gen_ai_client_token_usage``                   histogram  ``gen_ai_token_type`` input | output
=================================  =========  ==================================================

The GenAI histograms are labelled ``gen_ai_operation_name``, ``gen_ai_provider_name``,
``gen_ai_request_model`` (and ``error_type`` on the duration), as the conventions name them.

plus the token, cost and budget families of :mod:`workers.accounting.metrics`. Labels are bounded (model ids
come from configuration); job ids go to logs only. Logs never carry secrets: the
:class:`RedactingFilter` masks anything that looks like an API key or bearer token.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from workers.accounting.ledger import ReplicaWait
from workers.accounting.metrics import Children, UsageMetrics, build_usage_metrics
from workers.contract import CompletionResult, redact
from workers.jobs.decisions import DecisionMetrics, build_decision_metrics

__all__ = [
    "BreakerCollector",
    "DecisionMetrics",
    "JobMetrics",
    "RedactingFilter",
    "ReplicaWaitCollector",
    "WorkerMetrics",
    "build_worker_metrics",
    "install_log_redaction",
    "redact",
]

_TTFT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 60)
_DURATION_BUCKETS = (0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 900)
_WAIT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 14400)


@dataclass(frozen=True, slots=True)
class JobMetrics:
    requests: Counter
    retries: Counter
    fallbacks: Counter
    ttft: Histogram
    duration: Histogram
    jobs: Counter
    running: Gauge
    queue_wait: Histogram
    # each labelled child looked up once (workers/accounting/metrics.py: Children)
    _running: Children = field(init=False, repr=False, compare=False)
    _queue_wait: Children = field(init=False, repr=False, compare=False)
    _jobs: Children = field(init=False, repr=False, compare=False)
    _requests: Children = field(init=False, repr=False, compare=False)
    _ttft: Children = field(init=False, repr=False, compare=False)
    _duration: Children = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name in ("running", "queue_wait", "jobs", "requests", "ttft", "duration"):
            object.__setattr__(self, f"_{name}", Children(getattr(self, name)))

    def started(self, priority: str, queued_s: float | None) -> None:
        """A job's run starts: one more running in its class; its wait, for a first run."""
        self._running(priority).inc()
        if queued_s is not None:
            self._queue_wait(priority).observe(queued_s)

    def ended(self, priority: str) -> None:
        self._running(priority).dec()

    def record(self, result: CompletionResult) -> None:
        """Everything one finished job tells: attempts, fallbacks, latency, outcome."""
        # ``prompt`` is ``name@version`` of a published prompt (bounded: pushed versions), else ""
        self._jobs(result.status, result.prompt.label if result.prompt else "").inc()
        attempts = [a for a in result.attempts if a.status != "skipped"]
        for i, attempt in enumerate(attempts):
            ok = attempt.status == "succeeded"
            self._requests(attempt.model, "ok" if ok else "error").inc()
            nxt = attempts[i + 1] if i + 1 < len(attempts) else None
            if nxt is None:
                continue
            if nxt.model == attempt.model:
                self.retries.labels(model=attempt.model, error_type=attempt.error_type or "unknown").inc()
            else:
                self.fallbacks.labels(from_model=attempt.model, to_model=nxt.model).inc()
        model = result.model_used or (attempts[-1].model if attempts else "none")
        if result.timings.ttft_s is not None:
            self._ttft(model).observe(result.timings.ttft_s)
        if result.timings.total_s is not None:
            self._duration(model).observe(result.timings.total_s)


class RateAdmissionsCollector(Collector):
    """``llmq_rate_admissions_total{via}``: RPM/TPM admissions served from this process's leases
    (``lease``, no Redis call) or by the shared buckets' script (``redis``); read when scraped."""

    def __init__(self, stats: Callable[[], tuple[int, int]]) -> None:
        self._stats = stats

    def collect(self) -> Iterator[CounterMetricFamily]:
        local, calls = self._stats()
        family = CounterMetricFamily(
            "llmq_rate_admissions", "Rate-limited admissions by where they were decided.", labels=["via"]
        )
        family.add_metric(["lease"], float(local))
        family.add_metric(["redis"], float(calls))
        yield family


class ReplicaWaitCollector(Collector):
    """``llmq_ledger_replica_waits_total{outcome}``: ledger writes whose ``WAIT`` reached the replicas
    asked for in time (``acked``) or not (``short``: a fail-over then could lose them); read when scraped."""

    def __init__(self, wait: ReplicaWait) -> None:
        self._wait = wait

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(
            "llmq_ledger_replica_waits",
            "Ledger reservations and settlements by whether enough replicas acknowledged them in time.",
            labels=["outcome"],
        )
        family.add_metric(["acked"], float(self._wait.acked))
        family.add_metric(["short"], float(self._wait.short))
        yield family


class BreakerCollector(Collector):
    """``llm_breaker_open{model}``: this process's mirror of the shared breakers, read at scrape."""

    def __init__(self, states: Callable[[], dict[str, bool]]) -> None:
        self._states = states

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "llm_breaker_open", "1 while the model's shared circuit breaker is open or half-open.", labels=["model"]
        )
        for model, is_open in sorted(self._states().items()):
            family.add_metric([model], 1.0 if is_open else 0.0)
        yield family


@dataclass(frozen=True, slots=True)
class WorkerMetrics:
    registry: CollectorRegistry
    jobs: JobMetrics
    usage: UsageMetrics
    decisions: DecisionMetrics


def build_worker_metrics(registry: CollectorRegistry, *, schedule: Collector | None = None) -> WorkerMetrics:
    """The worker's metrics on ``registry``; ``schedule``: the queue's collector (``schedmetrics.py``)."""
    jobs = JobMetrics(
        requests=Counter("llm_requests_total", "Upstream attempts by outcome.", ["model", "status"], registry=registry),
        retries=Counter("llm_retries_total", "Attempts that were retried.", ["model", "error_type"], registry=registry),
        fallbacks=Counter(
            "llm_fallbacks_total", "Moves to the next model of a chain.", ["from_model", "to_model"], registry=registry
        ),
        ttft=Histogram(
            "llm_ttft_seconds", "Job start to first delta.", ["model"], buckets=_TTFT_BUCKETS, registry=registry
        ),
        duration=Histogram(
            "llm_job_duration_seconds", "Job run time.", ["model"], buckets=_DURATION_BUCKETS, registry=registry
        ),
        jobs=Counter(
            "llmq_jobs_total", "Finished jobs by status and prompt version.", ["status", "prompt"], registry=registry
        ),
        running=Gauge("llmq_jobs_running", "Jobs this process runs, by class.", ["priority"], registry=registry),
        queue_wait=Histogram(
            "llmq_queue_wait_seconds",
            "Submit to the start of a job's first run, by class.",
            ["priority"],
            buckets=_WAIT_BUCKETS,
            registry=registry,
        ),
    )
    if schedule is not None:
        registry.register(schedule)
    return WorkerMetrics(
        registry=registry, jobs=jobs, usage=build_usage_metrics(registry), decisions=build_decision_metrics(registry)
    )


def serve_metrics(registry: CollectorRegistry, port: int, addr: str = "0.0.0.0") -> None:
    """Expose ``/metrics`` for this worker process (``LLMQ_METRICS_PORT``)."""
    start_http_server(port, addr=addr, registry=registry)


class RedactingFilter(logging.Filter):
    """Masks API keys and bearer tokens in every record that passes through a handler."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg = cleaned
            record.args = ()
        return True


def install_log_redaction() -> None:
    """Add the filter to every handler of the root logger (called when a worker starts)."""
    root = logging.getLogger()
    for handler in root.handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())

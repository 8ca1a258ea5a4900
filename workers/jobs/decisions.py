"""Prometheus families for the chain's decisions and the GenAI client histograms.

Fed by the per-job observer (``workers/jobs/observe.py``); registered on the worker's registry by
``workers/runtime/telemetry.py`` (the table of names is there). Built on an injected registry,
never at import.
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram

from workers.contract import split_model_id
from workers.llm.model import CallReport

__all__ = ["DecisionMetrics", "build_decision_metrics"]

# the GenAI conventions' advised boundaries
_GENAI_DURATION_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92)
_GENAI_TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864)
_GENAI = ["gen_ai_operation_name", "gen_ai_provider_name", "gen_ai_request_model"]


@dataclass(frozen=True, slots=True)
class DecisionMetrics:
    """The chain's decisions, fed by the per-job observer (``workers/jobs/observe.py``)."""

    skips: Counter
    waits: Counter
    wait_seconds: Counter
    breaker: Counter
    requeues: Counter
    tools: Counter
    duration: Histogram
    ttfc: Histogram
    tokens: Histogram

    def record_call(self, report: CallReport) -> None:
        _, native = split_model_id(report.model)
        labels = ("chat", report.provider, native)
        self.duration.labels(*labels, report.error_type or "").observe(report.duration_s)
        if report.ttft_s is not None:
            self.ttfc.labels(*labels).observe(report.ttft_s)
        usage = report.usage
        if usage is not None and not usage.estimated:
            self.tokens.labels(*labels, "input").observe(usage.prompt_tokens)
            self.tokens.labels(*labels, "output").observe(usage.completion_tokens)


def build_decision_metrics(registry: CollectorRegistry) -> DecisionMetrics:
    def counter(name: str, doc: str, labels: list[str]) -> Counter:
        return Counter(name, doc, labels, registry=registry)

    return DecisionMetrics(
        skips=counter("llm_skips_total", "Models passed over untried, by reason.", ["model", "reason"]),
        waits=counter("llm_waits_total", "In-worker holds before a request, by reason.", ["model", "reason"]),
        wait_seconds=counter("llm_wait_seconds_total", "Seconds slept in those holds.", ["model", "reason"]),
        breaker=counter("llm_breaker_transitions_total", "Breaker moves made by this worker.", ["model", "state"]),
        requeues=counter("llmq_requeues_total", "Jobs re-queued with a countdown, by reason.", ["reason"]),
        tools=counter("llm_tool_calls_total", "Tool runs by outcome.", ["tool", "outcome"]),
        duration=Histogram(
            "gen_ai_client_operation_duration_seconds",
            "GenAI operation duration (one HTTP attempt).",
            [*_GENAI, "error_type"],
            buckets=_GENAI_DURATION_BUCKETS,
            registry=registry,
        ),
        ttfc=Histogram(
            "gen_ai_client_time_to_first_chunk_seconds",
            "Request start to the first streamed chunk.",
            _GENAI,
            buckets=_GENAI_DURATION_BUCKETS,
            registry=registry,
        ),
        tokens=Histogram(
            "gen_ai_client_token_usage",
            "Tokens per GenAI operation.",
            [*_GENAI, "gen_ai_token_type"],
            buckets=_GENAI_TOKEN_BUCKETS,
            registry=registry,
        ),
    )

"""One job's observer: the chain's hooks turned into metrics, span events and decision log lines.

Built per job by the pipeline and set as ``RunContext.hooks``. Each decision (retry, fallback,
skip, 429 hold, breaker change, re-queue, tool run) is counted in Prometheus at once, added as an
event to the job span, and logged as one structured line. Log lines follow the per-trace sampling
rule: they are held until the job ends and written when the job failed, was slow, was re-queued,
or its trace is in the ``LLMQ_LOG_SAMPLE`` share (decided from the trace id, so every process
makes the same choice for one job); a sampled job's lines are all there, a failure's always.
Breaker changes concern every job of the model, so they are written at once.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from typing import Any

from opentelemetry.trace import Span, Status, StatusCode
from opentelemetry.util.types import AttributeValue

from workers.contract import CompletionJob, CompletionResult
from workers.jobs.decisions import DecisionMetrics
from workers.llm.model import CallReport, ChainHooks
from workers.llm.tracing import GenAI

__all__ = ["JobObserver", "sampled"]

log = logging.getLogger("llmq.jobs")


def sampled(key: str, rate: float) -> bool:
    """Deterministic per-key (trace id, else job id) sampling: the same answer in every process."""
    if rate >= 1.0:
        return True
    if rate <= 0.0:
        return False
    digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < rate


class JobObserver(ChainHooks):
    def __init__(
        self,
        job: CompletionJob,
        span: Span,
        *,
        metrics: DecisionMetrics | None = None,
        sample: float = 1.0,
        slow_s: float = 30.0,
        logger: logging.Logger = log,
    ) -> None:
        self.job = job
        self.span = span
        self.metrics = metrics
        self.slow_s = slow_s
        self.logger = logger
        context = span.get_span_context()
        if context.is_valid:
            self.trace_id: str | None = format(context.trace_id, "032x")
            self.span_id: str | None = format(context.span_id, "016x")
        elif job.traceparent:
            self.trace_id, self.span_id = job.traceparent.split("-")[1:3]
        else:
            self.trace_id = self.span_id = None
        self.sampled = sampled(self.trace_id or job.id, sample)
        self._held: list[logging.LogRecord] = []
        self._logging = logger.isEnabledFor(logging.INFO)

    # --- output -------------------------------------------------------------------------------------

    def _event(self, name: str, attributes: Mapping[str, AttributeValue]) -> None:
        if self.span.is_recording():
            self.span.add_event(name, attributes)

    def _record(self, event: str, message: str, fields: dict[str, Any], level: int = logging.INFO) -> None:
        if not self._logging:
            return
        extra = {
            "llmq": {
                "event": event,
                "job_id": self.job.id,
                "tenant": self.job.tenant,
                **({"user": self.job.user} if self.job.user else {}),
                **fields,
            },
            "trace_id": self.trace_id,
            "span_id": self.span_id,
        }
        record = self.logger.makeRecord(self.logger.name, level, __file__, 0, message, (), None, extra=extra)
        if event == "breaker":
            self.logger.handle(record)
        else:
            self._held.append(record)

    def _flush(self, keep: bool) -> None:
        held, self._held = self._held, []
        if keep:
            for record in held:
                self.logger.handle(record)

    # --- hooks ----------------------------------------------------------------------------------------

    def on_wait(self, model: str, reason: str, seconds: float) -> None:
        if self.metrics is not None:
            self.metrics.waits.labels(model, reason).inc()
            self.metrics.wait_seconds.labels(model, reason).inc(seconds)
        self._event("llmq.wait", {"llmq.model": model, "llmq.reason": reason, "llmq.wait_s": seconds})
        what = "429 hold" if reason == "not_before" else "rate-limit wait"
        self._record(
            "wait", f"{model}: {what} of {seconds:.2f}s", {"model": model, "reason": reason, "wait_s": seconds}
        )

    def on_requeue(self, model: str, reason: str, seconds: float) -> None:
        # counted once, by the pipeline, when the job is actually re-queued (requeued())
        self._event("llmq.hold_too_long", {"llmq.model": model, "llmq.reason": reason, "llmq.wait_s": seconds})

    def on_skip(self, model: str, reason: str) -> None:
        if self.metrics is not None:
            self.metrics.skips.labels(model, reason).inc()
        self._event("llmq.skip", {"llmq.model": model, "llmq.reason": reason})
        self._record("skip", f"{model} skipped: {reason}", {"model": model, "reason": reason})

    def on_breaker(self, model: str, state: str) -> None:
        if self.metrics is not None:
            self.metrics.breaker.labels(model, state).inc()
        self._event("llmq.breaker", {"llmq.model": model, "llmq.state": state})
        level = logging.WARNING if state == "open" else logging.INFO
        self._record("breaker", f"{model}: circuit breaker {state}", {"model": model, "state": state}, level)

    def on_retry(self, model: str, error_type: str, attempt: int, wait_s: float) -> None:
        self._event(
            "llmq.retry",
            {"llmq.model": model, GenAI.ERROR_TYPE: error_type, GenAI.ATTEMPT: attempt, "llmq.wait_s": wait_s},
        )
        self._record(
            "retry",
            f"{model} attempt {attempt} failed ({error_type}); retrying in {wait_s:.2f}s",
            {"model": model, "error_type": error_type, "attempt": attempt, "backoff_s": round(wait_s, 3)},
        )

    def on_fallback(self, from_model: str, to_model: str, error_type: str) -> None:
        self._event(
            "llmq.fallback", {"llmq.from_model": from_model, "llmq.to_model": to_model, GenAI.ERROR_TYPE: error_type}
        )
        self._record(
            "fallback",
            f"falling back from {from_model} to {to_model} ({error_type})",
            {"from_model": from_model, "to_model": to_model, "error_type": error_type},
        )

    def on_call(self, report: CallReport) -> None:
        if self.metrics is not None:
            self.metrics.record_call(report)

    def on_tool(self, name: str, outcome: str, seconds: float) -> None:
        if self.metrics is not None:
            self.metrics.tools.labels(name, outcome).inc()
        self._record(
            "tool", f"tool {name}: {outcome}", {"tool": name, "outcome": outcome, "duration_s": round(seconds, 4)}
        )

    # --- the job's end ----------------------------------------------------------------------------

    def requeued(self, reason: str, seconds: float) -> None:
        """The job goes back to the queue with a countdown: counted, and its lines written."""
        if self.metrics is not None:
            self.metrics.requeues.labels(reason or "unknown").inc()
        self._event("llmq.requeue", {"llmq.reason": reason, "llmq.wait_s": seconds})
        self._record("requeue", f"re-queued for {seconds:.1f}s ({reason})", {"reason": reason, "countdown_s": seconds})
        self._flush(True)

    def finished(self, result: CompletionResult) -> None:
        """One line per finished job (always for failures and slow jobs), and the span's outcome."""
        tried = [a for a in result.attempts if a.status != "skipped"]
        usage = result.usage
        error_type = result.error.type if result.error else None
        span = self.span
        if span.is_recording():
            attrs: dict[str, AttributeValue] = {"llmq.status": result.status, "llmq.attempts": len(tried)}
            if result.model_used:
                attrs[GenAI.RESPONSE_MODEL] = result.model_used
            if not usage.estimated or usage.prompt_tokens:
                attrs[GenAI.INPUT_TOKENS] = usage.prompt_tokens
                attrs[GenAI.OUTPUT_TOKENS] = usage.completion_tokens
            if result.cost_usd is not None:
                attrs[GenAI.COST_USD] = result.cost_usd
            if result.cached:  # answered by the response cache: its tokens were used once, by another job
                attrs["llmq.cached"] = True
            if result.status == "failed":
                attrs[GenAI.ERROR_TYPE] = error_type or "error"
                span.set_status(Status(StatusCode.ERROR))
            span.set_attributes(attrs)
        total = result.timings.total_s or 0.0
        keep = self.sampled or result.status == "failed" or total >= self.slow_s
        fields = {
            "status": result.status,
            "model_used": result.model_used,
            "attempts": len(tried),
            "prompt_tokens": usage.prompt_tokens,
            "completion_tokens": usage.completion_tokens,
            "tokens_estimated": usage.estimated,
            "cost_usd": result.cost_usd,
            "cached": result.cached,
            "ttft_s": result.timings.ttft_s,
            "duration_s": result.timings.total_s,
            "queued_s": result.timings.queued_s,
            "error_type": error_type,
        }
        level = logging.WARNING if result.status == "failed" else logging.INFO
        self._record("job", f"job {self.job.id} {result.status}", fields, level)
        self._flush(keep)

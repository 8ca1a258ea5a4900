"""Which prompt version produced a job: the ``prompt`` metrics label and the batch output."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from producers.batch.records import EXTRA_KEY, result_record
from workers.contract import CompletionResult, PromptInfo
from workers.runtime.telemetry import build_worker_metrics

INFO = PromptInfo(name="summarize", version=3, hash="a" * 64)


def test_job_metrics_carry_name_at_version_for_published_prompts_only() -> None:
    registry = CollectorRegistry()
    metrics = build_worker_metrics(registry)
    metrics.jobs.record(CompletionResult(id="j1", status="succeeded", prompt=INFO))
    metrics.jobs.record(CompletionResult(id="j2", status="succeeded", prompt=INFO))
    metrics.jobs.record(CompletionResult(id="j3", status="failed"))
    value = registry.get_sample_value
    assert value("llmq_jobs_total", {"status": "succeeded", "prompt": "summarize@3"}) == 2
    assert value("llmq_jobs_total", {"status": "failed", "prompt": ""}) == 1
    # the hash never becomes a label value (bounded cardinality: one series per pushed version)
    assert all("a" * 64 not in str(s.labels) for m in registry.collect() for s in m.samples)


def test_the_batch_output_names_the_prompt_version() -> None:
    _, record = result_record(CompletionResult(id="j1", status="succeeded", content="ok", prompt=INFO), "row-1", 1)
    assert record[EXTRA_KEY]["prompt"] == {"name": "summarize", "version": 3, "hash": "a" * 64}
    _, plain = result_record(CompletionResult(id="j2", status="succeeded", content="ok"), "row-2", 2)
    assert "prompt" not in plain[EXTRA_KEY]

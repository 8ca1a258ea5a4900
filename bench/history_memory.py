"""Redis memory per job of the job history (``workers/contract/history.py``): one JSON line.

Writes the history of N ended jobs (the worker's own writes, ``HistoryWriter``) into a fresh Redis
and reports ``used_memory`` growth per job, for succeeded jobs and for failed ones (a failed job
also keeps its request, for replay; the request here is one short user message).

    .venv/bin/python bench/history_memory.py [--jobs 20000]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from llmq.localredis import ManagedRedis
from workers.contract import Attempt, CompletionJob, CompletionResult, ErrorInfo, Timings, Usage
from workers.jobs.history import HistoryWriter


def _job(i: int, tenant: str) -> CompletionJob:
    return CompletionJob(
        model="openai:gpt-4o-mini",
        tenant=tenant,
        messages=[{"role": "user", "content": f"Summarise ticket {i} in one sentence."}],
        metadata={"custom_id": f"req-{i}"},
        traceparent="00-" + f"{i:032x}" + "-00f067aa0ba902b7-01",
        submitted_at=time.time(),
    )


def _result(job: CompletionJob, failed: bool) -> CompletionResult:
    attempt = Attempt(model=job.model, status="failed" if failed else "succeeded")
    if failed:
        attempt.error_type, attempt.http_status = "rate_limited", 429
    return CompletionResult(
        id=job.id,
        status="failed" if failed else "succeeded",
        tenant=job.tenant,
        model_used=job.model,
        usage=Usage(prompt_tokens=25, completion_tokens=0 if failed else 40),
        cost_usd=None if failed else 0.0000315,
        attempts=[attempt] * (4 if failed else 1),
        error=ErrorInfo(type="rate_limited", message="429 from openai: slow down", retryable=True) if failed else None,
        timings=Timings(queued_s=0.01, ttft_s=0.3, total_s=1.2),
    )


def measure(client: redis.Redis, jobs: int, failed: bool) -> float:
    client.flushall()
    before = int(client.info("memory")["used_memory"])
    writer = HistoryWriter(7)
    pipe = client.pipeline(transaction=False)
    for i in range(jobs):
        job = _job(i, f"tenant-{i % 20}")
        for write in writer.writes(job, _result(job, failed)):
            pipe.execute_command(*write)
        if i % 500 == 499:
            pipe.execute()
    pipe.execute()
    return (int(client.info("memory")["used_memory"]) - before) / jobs


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--jobs", type=int, default=20_000)
    args = p.parse_args()
    with ManagedRedis() as server:
        client = redis.Redis.from_url(server.url)
        out = {
            "bench": "history_memory",
            "jobs": args.jobs,
            "bytes_per_succeeded_job": round(measure(client, args.jobs, failed=False)),
            "bytes_per_failed_job": round(measure(client, args.jobs, failed=True)),
        }
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()

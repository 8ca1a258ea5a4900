"""Worker CPU per job with tracing off, tracing on, and JSON logs; ratios against "off", same run.

One Redis, one simulator (20 deltas per answer, sent at once by default, or spread over
``--upstream-s`` seconds: 1.0 is ``bench/queue_bench.py``'s job shape); for each mode a fresh
``celery worker -P gevent`` process is started with that mode's environment, warmed up, and timed
on the same number of jobs submitted through the producer (results collected through a reply list):

* ``off``     — no OTLP endpoint (``OTEL_SDK_DISABLED=true``), text logs, successes not logged
  (``LLMQ_LOG_SAMPLE=0``): the no-op tracer path;
* ``tracing`` — ``OTEL_TRACES_SAMPLER=always_on``, batch span processor exporting OTLP/HTTP to a
  receiver in this process (it decodes every request), logs as in ``off``;
* ``json``    — tracing off, ``LLMQ_LOG_FORMAT=json`` and ``LLMQ_LOG_SAMPLE=1``: one JSON line per job.

The modes run round-robin ``--rounds`` times so load drift on a shared machine hits them alike.

    .venv/bin/python bench/observability_bench.py [--jobs 500] [--concurrency 100] [--rounds 2]
    .venv/bin/python bench/observability_bench.py --upstream-s 1 --concurrency 200 --jobs 1000   # the queue bench's shape
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import psutil
import redis

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from llmq.devstack import LocalStack  # noqa: E402
from producers.client import Client  # noqa: E402
from tests.support.otlp_receiver import OTLPReceiver  # noqa: E402


def _cpu(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return t.user + t.system


def run_jobs(stack: LocalStack, jobs: int, worker: subprocess.Popen[bytes]) -> tuple[int, float, float]:
    proc = psutil.Process(worker.pid)
    reply = f"llmq:reply:obsbench-{time.time_ns()}"
    listener = redis.Redis.from_url(stack.redis_url)
    with Client(stack.redis_url) as client:
        cpu0 = _cpu(proc)
        t0 = time.perf_counter()
        for i in range(jobs):
            client.submit(
                {
                    "model": "openai:gpt-4o-mini",
                    "messages": [{"role": "user", "content": f"observe {i}"}],
                    "max_tokens": 64,
                    "reply_to": reply,
                }
            )
        ok = 0
        for _ in range(jobs):
            item = listener.blpop([reply], timeout=120)
            if item is None:
                break
            ok += b'"status":"succeeded"' in item[1]
        wall = time.perf_counter() - t0
        cpu = _cpu(proc) - cpu0
    listener.close()
    return ok, wall, cpu


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--jobs", type=int, default=500)
    p.add_argument("--concurrency", type=int, default=100)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument(
        "--upstream-s",
        type=float,
        default=0.0,
        help="simulated answer time (20 deltas spread over it); 1.0 is bench/queue_bench.py's shape, 0 the worst case",
    )
    args = p.parse_args()
    with OTLPReceiver() as receiver:
        modes = {
            "off": {"OTEL_SDK_DISABLED": "true", "LLMQ_LOG_FORMAT": "text", "LLMQ_LOG_SAMPLE": "0"},
            "tracing": {
                "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
                "OTEL_TRACES_SAMPLER": "always_on",
                "LLMQ_LOG_FORMAT": "text",
                "LLMQ_LOG_SAMPLE": "0",
            },
            "json": {"OTEL_SDK_DISABLED": "true", "LLMQ_LOG_FORMAT": "json", "LLMQ_LOG_SAMPLE": "1"},
        }
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "LLMQ_"))}
        cpu_ms: dict[str, list[float]] = {m: [] for m in modes}
        with LocalStack(env=env) as stack:
            stack.start_redis()
            stack.start_simulator(tokens_per_s=20.0 / args.upstream_s if args.upstream_s else 0.0)
            for round_no in range(args.rounds):
                for mode, extra in modes.items():
                    name = f"worker-{mode}-{round_no}"
                    worker = stack.start_worker(pool="gevent", concurrency=args.concurrency, name=name, extra_env=extra)
                    stack.wait_for_workers(1)
                    run_jobs(stack, min(100, args.jobs), worker)  # warm-up
                    ok, wall, cpu = run_jobs(stack, args.jobs, worker)
                    # every job has ended and the CPU was read: a hard stop changes no figure (a soft
                    # one can wait up to a minute on Celery's shutdown of its consumer)
                    worker.kill()
                    worker.wait(30)
                    # forget it, so the next mode's wait_for_workers does not see a dead worker
                    stack.processes[:] = [(n, proc) for n, proc in stack.processes if proc is not worker]
                    cpu_ms[mode].append(1000 * cpu / max(1, ok))
                    print(
                        f"round {round_no + 1} {mode:<8} ok {ok:>5}  {ok / wall:7.1f} jobs/s  {cpu_ms[mode][-1]:6.2f} ms CPU/job",
                        flush=True,
                    )
        spans = len(receiver.spans)
    base = statistics.median(cpu_ms["off"])
    print(
        f"\n{args.jobs} jobs x {args.rounds} rounds, gevent concurrency {args.concurrency}, {args.upstream_s:g} s upstream;"
        f" spans received: {spans}"
    )
    print(f"{'mode':<10}{'CPU ms/job (median)':>22}{'vs off':>9}")
    for mode, values in cpu_ms.items():
        median = statistics.median(values)
        print(f"{mode:<10}{median:>22.2f}{median / base:>8.2f}x")


if __name__ == "__main__":
    main()

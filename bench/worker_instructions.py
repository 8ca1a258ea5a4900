"""A whole gevent worker's instructions per job under callgrind: load-proof A/B of worker code.

``hotpath_bench.py --measure instructions`` counts one job's own thread (``JobRunner.run``) and
leaves out what a worker does around it: Celery's consumer and task handling, acks, task events,
the shared flush thread, gevent's hub. This runs one ``llmq worker -P gevent`` under valgrind's
callgrind with instrumentation off, warms it up with ``--warmup`` jobs, turns instrumentation on
(``callgrind_control -i on``), runs ``--jobs`` queue-bench jobs (20 deltas, ``--upstream`` seconds
each, submitted at once, results collected through a reply list), turns it off and reads the count
of every thread of the worker when it stops. The same code path gives about the same count however
loaded the machine is; what still varies with timing (how many flushes or acks share a round trip,
idle wake-ups while valgrind runs the worker ~50x slower) is why each variant runs ``--rounds``
times, alternating, and the median is reported.

A variant is ``name:KEY=VALUE,...`` of worker environment, e.g. ``old:PYTHONPATH=/tmp/older`` (a
frozen copy of another tree's ``workers``; run from outside the checkout) or
``nobatch:LLMQ_LEDGER_BATCH=0``; the first (default ``this``: no change) is the baseline. One JSON
line at the end.

    .venv/bin/python bench/worker_instructions.py --jobs 200 --variant 'old:PYTHONPATH=/tmp/older'
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import redis  # noqa: E402

from llmq.devstack import LocalStack  # noqa: E402
from producers.client import Client  # noqa: E402


def parse_variant(text: str) -> tuple[str, dict[str, str]]:
    name, _, rest = text.partition(":")
    return name, dict(item.split("=", 1) for item in rest.split(",") if item.strip())


def run_jobs(url: str, jobs: int, timeout_s: float = 1800.0) -> int:
    """Submit ``jobs`` queue-bench jobs at once and wait for their results; how many succeeded."""
    nonce = time.time_ns()
    reply = f"llmq:reply:cg-{nonce}"
    client = Client(url)
    listener = redis.Redis.from_url(url, socket_timeout=None)
    try:
        for i in range(jobs):
            client.submit(
                {
                    "model": "openai:gpt-4o-mini",
                    "messages": [{"role": "user", "content": f"cg {nonce} {i}"}],
                    "max_tokens": 64,
                    "reply_to": reply,
                }
            )
        ok = done = 0
        deadline = time.monotonic() + timeout_s
        while done < jobs and time.monotonic() < deadline:
            item = listener.blpop([reply], timeout=30)
            if item is not None:
                done += 1
                ok += b'"status":"succeeded"' in item[1]
        return ok
    finally:
        client.close()
        listener.close()


def one_round(args: argparse.Namespace, name: str, env: dict[str, str]) -> dict[str, Any]:
    out = Path(tempfile.mkdtemp(prefix="worker-cg-")) / "callgrind.out"
    base_env = {k: v for k, v in os.environ.items() if k != "LLMQ_REDIS_URL"}
    with LocalStack(env=base_env) as stack:
        stack.start_redis()
        stack.start_simulator(tokens_per_s=20.0 / args.upstream if args.upstream else 0.0)
        argv = [
            "valgrind",
            "--tool=callgrind",
            "--trace-children=yes",
            "--instr-atstart=no",
            f"--callgrind-out-file={out}",
            sys.executable,
            "-m",
            "llmq.cli",
            "worker",
            "--pool",
            "gevent",
            "--concurrency",
            str(args.concurrency),
            "--hostname",
            f"cg-{name}@%h",
            "--loglevel",
            args.loglevel,
        ]
        worker = stack._spawn("worker", argv, {**stack.provider_env(), **env})
        stack.wait_for_workers(1, timeout=600)
        run_jobs(stack.redis_url, args.warmup)
        subprocess.run(["callgrind_control", "-i", "on", str(worker.pid)], check=True, capture_output=True)
        t0 = time.perf_counter()
        ok = run_jobs(stack.redis_url, args.jobs)
        wall = time.perf_counter() - t0
        subprocess.run(["callgrind_control", "-i", "off", str(worker.pid)], check=True, capture_output=True)
        os.kill(worker.pid, signal.SIGTERM)
        worker.wait(300)
        log = (stack.log_dir / "worker.log").read_text(errors="replace")
    found = re.findall(r"Collected : (\d+)", log)
    if not found or ok != args.jobs:
        raise RuntimeError(f"{name}: {ok}/{args.jobs} jobs, log tail:\n{log[-3000:]}")
    return {"instructions_per_job": int(found[-1]) / args.jobs, "wall_s": round(wall, 1)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variant", action="append", default=[], help="name:KEY=VALUE,... of worker env (repeatable)")
    p.add_argument("--jobs", type=int, default=200)
    p.add_argument("--warmup", type=int, default=40)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--concurrency", type=int, default=200)
    p.add_argument("--upstream", type=float, default=0.0, help="seconds per answer (20 deltas)")
    p.add_argument("--loglevel", default="WARNING", help="the worker's (INFO: what `llmq worker` runs with by default)")
    args = p.parse_args()
    variants = [parse_variant(v) for v in ["this:", *args.variant]]
    counts: dict[str, list[float]] = {name: [] for name, _ in variants}
    for k in range(args.rounds):
        for name, env in variants if k % 2 == 0 else list(reversed(variants)):
            row = one_round(args, name, env)
            counts[name].append(row["instructions_per_job"])
            print(
                f"{name}: {row['instructions_per_job'] / 1e6:.3f} M instructions per job ({row['wall_s']} s)",
                flush=True,
            )
    base = statistics.median(counts[variants[0][0]])
    result = {
        name: {
            "instructions_per_job": round(statistics.median(c)),
            "rounds": [round(x) for x in c],
            "over_baseline": round(statistics.median(c) / base, 4),
        }
        for name, c in counts.items()
    }
    summary = {"bench": "worker_instructions", "jobs": args.jobs, "upstream_s": args.upstream, "variants": result}
    print(json.dumps(summary, separators=(",", ":")), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

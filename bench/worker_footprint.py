"""A gevent worker's memory: resident after start, after a run of the queue bench's jobs, and its peak.

One Redis, one simulator (``--upstream`` seconds per answer), one ``llmq worker -P gevent -c 200``
(``--worker-env`` to A/B a setting, or ``PYTHONPATH=<older tree>`` for older code); ``--jobs`` of the
queue bench's jobs (``openai:gpt-4o-mini``). Prints the worker's ``VmRSS`` after start and after the
run and its ``VmHWM`` (the peak the queue bench reports), in MB, and one JSON line.

    .venv/bin/python bench/worker_footprint.py [--jobs 1000] [--upstream 0]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from _measure import proc_peak_rss_mb  # noqa: E402
from queue_bench import run_queue  # noqa: E402

from llmq.devstack import LocalStack  # noqa: E402


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--jobs", type=int, default=1000)
    p.add_argument("--upstream", type=float, default=0.0)
    p.add_argument("--worker-env", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args()
    env = {k: v for k, v in os.environ.items() if k != "LLMQ_REDIS_URL"}
    with LocalStack(env=env) as stack:
        stack.start_redis()
        stack.start_simulator(tokens_per_s=20.0 / args.upstream if args.upstream else 0.0)
        extra = dict(kv.split("=", 1) for kv in args.worker_env)
        worker = stack.start_worker(pool="gevent", concurrency=200, name="footprint", extra_env=extra)
        stack.wait_for_workers(1, timeout=60)
        time.sleep(1.0)
        started = rss_mb(worker.pid)
        peak_start = proc_peak_rss_mb(worker.pid)
        run = run_queue(stack, args.jobs, [worker])
        after = rss_mb(worker.pid)
        peak = proc_peak_rss_mb(worker.pid)
    row = {
        "rss_after_start_mb": round(started, 1),
        "peak_after_start_mb": round(peak_start, 1),
        "rss_after_run_mb": round(after, 1),
        "peak_rss_mb": round(peak, 1),
        "jobs_ok": run["ok"],
    }
    print(
        f"after start {row['rss_after_start_mb']} MB (peak {row['peak_after_start_mb']}), "
        f"after {args.jobs} jobs {row['rss_after_run_mb']} MB, peak {row['peak_rss_mb']} MB"
    )
    print(json.dumps({"bench": "worker_footprint", "upstream_s": args.upstream, **row}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Queue path vs direct call vs raw asyncio client, same simulator, same run.

For each upstream latency (0 s and 1 s, 20 deltas per answer) it runs, one after another:

* ``raw``    — one asyncio process, aiohttp + redis.asyncio PUBLISH per delta (the notes' limit);
* ``direct`` — our provider + HTTP client + coalescing publisher in a thread pool, no queue;
* ``queue``  — producer -> Redis -> one ``celery worker -P gevent`` process -> simulator, results
  collected through a reply list.

It prints jobs/s and CPU ms per job of the process doing the work (the worker for ``queue``), and
the ratios queue/raw and queue/direct. Each path is one process, so it is also "per worker core".

    .venv/bin/python bench/queue_bench.py [--jobs 1000] [--concurrency 200] [--latencies 0,1]
"""

from __future__ import annotations

import argparse
import json
import os
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


def _tree_cpu(proc: psutil.Process) -> float:
    total = 0.0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def _run_baseline(script: str, url_flag: str, url: str, stack: LocalStack, jobs: int, concurrency: int) -> dict:
    """Run one baseline client script as its own process and read its JSON line."""
    argv = [sys.executable, str(HERE / script), url_flag, url, "--redis", stack.redis_url]
    argv += ["--jobs", str(jobs), "--concurrency", str(concurrency)]
    out = subprocess.run(argv, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_raw(stack: LocalStack, jobs: int, concurrency: int) -> dict:
    url = f"{stack.simulator_url}/v1/chat/completions"
    return _run_baseline("_raw_client.py", "--url", url, stack, jobs, concurrency)


def run_direct(stack: LocalStack, jobs: int, concurrency: int) -> dict:
    return _run_baseline("_direct_client.py", "--base-url", f"{stack.simulator_url}/v1", stack, jobs, concurrency)


def run_queue(stack: LocalStack, jobs: int, concurrency: int, worker: subprocess.Popen[bytes]) -> dict[str, float]:
    proc = psutil.Process(worker.pid)
    reply = f"llmq:reply:bench-{time.time_ns()}"
    client = Client(stack.redis_url)
    listener = redis.Redis.from_url(stack.redis_url)
    cpu0 = _tree_cpu(proc)
    t0 = time.perf_counter()
    for i in range(jobs):
        client.submit(
            {
                "model": "openai:gpt-4o-mini",
                "messages": [{"role": "user", "content": f"queue {i}"}],
                "max_tokens": 64,
                "reply_to": reply,
            }
        )
    ok = errors = 0
    while ok + errors < jobs:
        item = listener.blpop([reply], timeout=120)
        if item is None:
            break
        if b'"status":"succeeded"' in item[1]:
            ok += 1
        else:
            errors += 1
    wall = time.perf_counter() - t0
    cpu = _tree_cpu(proc) - cpu0
    client.close()
    listener.close()
    return {"ok": ok, "errors": {"failed": errors} if errors else {}, "wall_s": wall, "cpu_s": cpu}


def _row(name: str, r: dict) -> dict:
    ok = max(1, int(r["ok"]))
    return {
        "path": name,
        "ok": int(r["ok"]),
        "errors": r["errors"],
        "jobs_s": round(r["ok"] / r["wall_s"], 1),
        "cpu_ms_job": round(1000 * r["cpu_s"] / ok, 2),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--jobs", type=int, default=1000)
    p.add_argument("--concurrency", type=int, default=200)
    p.add_argument("--latencies", default="0,1")
    p.add_argument("--json", help="also write the rows to this file")
    args = p.parse_args()
    rows = []
    for latency in [float(x) for x in args.latencies.split(",")]:
        env = {k: v for k, v in os.environ.items() if k != "LLMQ_REDIS_URL"}
        with LocalStack(env=env) as stack:
            stack.start_redis()
            # 20 deltas spread over the latency (0 = all at once)
            stack.start_simulator(tokens_per_s=20.0 / latency if latency else 0.0)
            worker = stack.start_worker(pool="gevent", concurrency=args.concurrency, name="benchworker")
            stack.wait_for_workers(1)
            run_queue(stack, min(100, args.jobs), args.concurrency, worker)  # warm-up
            raw = _row("raw asyncio (aiohttp)", run_raw(stack, args.jobs, args.concurrency))
            direct = _row("direct (no queue)", run_direct(stack, args.jobs, args.concurrency))
            queue = _row("queue (celery gevent)", run_queue(stack, args.jobs, args.concurrency, worker))
        for row in (raw, direct, queue):
            row["latency_s"] = latency
            rows.append(row)
        print(f"\nupstream latency {latency:.0f} s, {args.jobs} jobs, concurrency {args.concurrency}, 20 deltas/job")
        print(f"{'path':<24}{'ok':>6}{'jobs/s':>9}{'CPU ms/job':>12}  errors")
        for row in (raw, direct, queue):
            print(f"{row['path']:<24}{row['ok']:>6}{row['jobs_s']:>9}{row['cpu_ms_job']:>12}  {row['errors'] or ''}")
        print(
            f"queue/raw: {queue['jobs_s'] / raw['jobs_s']:.2f}x jobs/s, {queue['cpu_ms_job'] / raw['cpu_ms_job']:.2f}x CPU/job;"
            f"  queue/direct: {queue['jobs_s'] / direct['jobs_s']:.2f}x jobs/s, "
            f"{queue['cpu_ms_job'] / direct['cpu_ms_job']:.2f}x CPU/job",
            flush=True,
        )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()

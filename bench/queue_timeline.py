"""Where a queue run's slots sit idle: the ramp, the steady state and the tail, from each job's times.

``queue_bench.py`` reports ``in_flight_mean`` (the jobs' run time over the wall: how many of the
worker's slots held a job on average). This runs the same shape (one Redis, the simulator, one
``llmq worker -P gevent``, ``--jobs`` jobs submitted one after another, results through a reply
list), takes each job's start (its result's arrival minus its run time) and end, and splits the
idle slot-seconds (slots x wall - the jobs' run time) into three spans:

* **ramp**: until the ``concurrency``-th job started (the producer's pace and the worker's pickup);
* **steady**: from there to the last job's start (refills: slots freed and taken again);
* **tail**: from the last start to the last end (the last wave: jobs started spread out end spread out).

Also where the ramp stands (the k-th submit against the k-th start, for k = 1, a quarter, half, three
quarters and all of the slots) and how spread out the last wave ends (the first of the last
``concurrency`` ends, their median, the last end): the raw client's waves stay in step (its last
wave's ends span 0.13–0.2 s: ``bench/RESULTS-queue.md``, sixth pass), the queue's smear.

Also the worker's user and system CPU per job. One JSON line at the end, per round.

    .venv/bin/python bench/queue_timeline.py --upstream 1 --rounds 2
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import redis

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from queue_bench import _start_workers, _stop_workers, run_queue  # noqa: E402

from llmq.devstack import LocalStack  # noqa: E402
from producers.client import Client  # noqa: E402


def one_round(stack: LocalStack, worker: psutil.Process, jobs: int, slots: int) -> dict[str, Any]:
    nonce = time.time_ns()
    reply = f"llmq:reply:timeline-{nonce}"
    client = Client(stack.redis_url)
    listener = redis.Redis.from_url(stack.redis_url)
    cpu0 = worker.cpu_times()
    t0 = time.perf_counter()
    sent: list[float] = []  # each job's submit, seconds after the first
    for i in range(jobs):
        sent.append(time.perf_counter() - t0)
        client.submit(
            {
                "model": "openai:gpt-4o-mini",
                "messages": [{"role": "user", "content": f"timeline {nonce} {i}"}],
                "max_tokens": 64,
                "reply_to": reply,
            }
        )
    submit_s = time.perf_counter() - t0
    spans: list[tuple[float, float]] = []  # (start, end) seconds after the first submit
    while len(spans) < jobs:
        item = listener.blpop([reply], timeout=120)
        if item is None:
            break
        end = time.perf_counter() - t0
        total = json.loads(item[1])["timings"]["total_s"] or 0.0
        spans.append((end - total, end))
    wall = time.perf_counter() - t0
    cpu1 = worker.cpu_times()
    client.close()
    listener.close()
    starts = sorted(s for s, _ in spans)
    ends = sorted(e for _, e in spans)
    ramp_end, last_start = starts[min(slots, len(starts)) - 1], starts[-1]
    step = 0.01
    busy = [sum(1 for s, e in spans if s <= k * step < e) for k in range(int(wall / step) + 1)]

    def idle(lo: float, hi: float) -> float:
        return round(sum(slots - n for k, n in enumerate(busy) if lo <= k * step < hi) * step, 1)

    steady = [n for k, n in enumerate(busy) if ramp_end <= k * step < last_start]
    marks = [k for k in (1, slots // 4, slots // 2, 3 * slots // 4, slots) if 0 < k <= len(starts)]
    wave = min(slots, len(ends))
    return {
        "jobs": len(spans),
        # the ramp: the k-th job's submit and the k-th start, seconds after the first submit
        "ramp_marks": {str(k): [round(sent[k - 1], 3), round(starts[k - 1], 3)] for k in marks},
        # the last wave's spread: the first of the last ``slots`` ends, their median, the last end
        "last_wave_ends": [round(ends[-wave], 3), round(ends[-wave + wave // 2], 3), round(ends[-1], 3)],
        "wall_s": round(wall, 3),
        "jobs_per_s": round(len(spans) / wall, 1),
        "submit_s": round(submit_s, 3),
        "run_s_mean": round(sum(e - s for s, e in spans) / max(1, len(spans)), 4),
        "ramp_s": round(ramp_end, 3),
        "tail_s": round(ends[-1] - last_start, 3),
        "steady_in_flight_mean": round(sum(steady) / max(1, len(steady)), 1),
        "idle_slot_s": {
            "ramp": idle(0, ramp_end),
            "steady": idle(ramp_end, last_start),
            "tail": idle(last_start, wall + 1),
        },
        "worker_user_ms_per_job": round(1000 * (cpu1.user - cpu0.user) / max(1, len(spans)), 2),
        "worker_system_ms_per_job": round(1000 * (cpu1.system - cpu0.system) / max(1, len(spans)), 2),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--jobs", type=int, default=1000)
    p.add_argument("--concurrency", type=int, default=200)
    p.add_argument("--upstream", type=float, default=1.0, help="seconds per answer (20 deltas)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--pool", default="gevent")
    p.add_argument("--worker-env", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args()
    env = {k: v for k, v in os.environ.items() if k != "LLMQ_REDIS_URL"}
    rounds = []
    with LocalStack(env=env) as stack:
        stack.start_redis()
        stack.start_simulator(tokens_per_s=20.0 / args.upstream if args.upstream else 0.0)
        worker_env = dict(kv.split("=", 1) for kv in args.worker_env)
        workers = _start_workers(stack, args, args.concurrency, 1, worker_env, "timeline")
        try:
            run_queue(stack, 100, workers)  # warm-up
            for _ in range(args.rounds):
                row = one_round(stack, psutil.Process(workers[0].pid), args.jobs, args.concurrency)
                idle = row["idle_slot_s"]
                print(
                    f"{row['jobs_per_s']} jobs/s, wall {row['wall_s']} s (submit {row['submit_s']} s), run mean "
                    f"{row['run_s_mean']} s; idle slot-s: ramp {idle['ramp']} (200th start {row['ramp_s']} s), "
                    f"steady {idle['steady']} ({row['steady_in_flight_mean']} busy), tail {idle['tail']} "
                    f"({row['tail_s']} s); worker CPU user {row['worker_user_ms_per_job']} + system "
                    f"{row['worker_system_ms_per_job']} ms/job",
                    flush=True,
                )
                print(
                    f"  ramp (k: submit, start) {row['ramp_marks']}; last wave ends {row['last_wave_ends']}", flush=True
                )
                rounds.append(row)
        finally:
            _stop_workers(workers)
    print(json.dumps({"bench": "queue_timeline", "upstream_s": args.upstream, "rounds": rounds}), flush=True)


if __name__ == "__main__":
    main()

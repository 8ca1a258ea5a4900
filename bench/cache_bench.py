"""A response-cache hit's latency from submit to result, next to a live call's, through the real queue.

One Redis, one simulator (``--upstream`` seconds per answer, 20 deltas), one ``celery worker -P
gevent``. Sequentially (latency, not throughput): ``--jobs`` live calls of distinct requests, then
one cacheable request called once and asked again ``--jobs`` times (hits). Each time is submit ->
result read from the producer's reply list. Prints p50/p90 per kind and one JSON line.

    .venv/bin/python bench/cache_bench.py --jobs 100 --upstream 0.5
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import redis  # noqa: E402
from queue_bench import _start_workers, _stop_workers  # noqa: E402

from llmq.devstack import LocalStack  # noqa: E402
from producers.client import Client  # noqa: E402


def _timed(client: Client, listener: redis.Redis, job: dict[str, Any], reply: str) -> tuple[float, bool]:
    t0 = time.perf_counter()
    client.submit({**job, "reply_to": reply})
    item = listener.blpop([reply], timeout=60)
    took = time.perf_counter() - t0
    assert item is not None, "no result within 60 s"
    result = json.loads(item[1])
    assert result["status"] == "succeeded", result.get("error")
    return took, bool(result.get("cached"))


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--jobs", type=int, default=100)
    p.add_argument("--upstream", type=float, default=0.5, help="seconds the simulator takes per answer")
    p.add_argument("--pool", default="gevent")
    args = p.parse_args()
    env = {k: v for k, v in os.environ.items() if k != "LLMQ_REDIS_URL"}
    with LocalStack(env=env) as stack:
        stack.start_redis()
        stack.start_simulator(tokens_per_s=20.0 / args.upstream if args.upstream else 0.0)
        workers = _start_workers(stack, args, 20, 1, {}, "cachebench")
        client = Client(stack.redis_url)
        listener = redis.Redis.from_url(stack.redis_url)
        nonce = time.time_ns()
        base = {"model": "openai:gpt-4o-mini", "max_tokens": 64}
        for i in range(5):  # warm-up: imports, pools
            _timed(
                client,
                listener,
                {**base, "messages": [{"role": "user", "content": f"warm {nonce} {i}"}]},
                "llmq:reply:cb-w",
            )
        live = [
            _timed(
                client,
                listener,
                {**base, "messages": [{"role": "user", "content": f"live {nonce} {i}"}]},
                "llmq:reply:cb-l",
            )[0]
            for i in range(args.jobs)
        ]
        cached_job = {**base, "messages": [{"role": "user", "content": f"cached {nonce}"}], "cache": {"ttl_s": 600}}
        first, was_cached = _timed(client, listener, cached_job, "llmq:reply:cb-c")
        assert not was_cached
        hits = []
        for _ in range(args.jobs):
            took, was_cached = _timed(client, listener, cached_job, "llmq:reply:cb-h")
            assert was_cached
            hits.append(took)
        client.close()
        listener.close()
        _stop_workers(workers)
    summary = {
        "bench": "cache_bench",
        "upstream_s": args.upstream,
        "jobs": args.jobs,
        "live_ms_p50": _pct(live, 0.5),
        "live_ms_p90": _pct(live, 0.9),
        "first_cacheable_ms": round(1000 * first, 2),
        "hit_ms_p50": _pct(hits, 0.5),
        "hit_ms_p90": _pct(hits, 0.9),
    }
    summary["hit_over_live_p50"] = round(summary["hit_ms_p50"] / summary["live_ms_p50"], 3)
    print(f"live call  p50 {summary['live_ms_p50']} ms  p90 {summary['live_ms_p90']} ms  (upstream {args.upstream} s)")
    print(f"cache hit  p50 {summary['hit_ms_p50']} ms  p90 {summary['hit_ms_p90']} ms")
    print(json.dumps(summary, separators=(",", ":")))


if __name__ == "__main__":
    main()

"""The fairness bench's producer: submit jobs and collect their results, in the tree on ``PYTHONPATH``.

Run by ``fairness_bench.py`` with ``PYTHONPATH`` set to the tree it measures (the scheduler's, or
the FIFO one before it), so the producer's side of the queue is that tree's too. Submits ``--jobs``
jobs of one tenant and one class (the job's defaults) with one reply list, waits for every result,
prints one JSON line: ok, wall seconds, submit seconds, this process's CPU seconds.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _measure import self_cpu_s


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--redis", required=True)
    p.add_argument("--jobs", type=int, required=True)
    p.add_argument("--tag", required=True)
    args = p.parse_args()

    import redis

    from producers.client import Client

    reply = f"llmq:reply:fair-{args.tag}"
    client = Client(args.redis)
    listener = redis.Redis.from_url(args.redis)
    cpu0 = self_cpu_s()
    t0 = time.perf_counter()
    for i in range(args.jobs):
        client.submit(
            {
                "model": "openai:gpt-4o-mini",
                "messages": [{"role": "user", "content": f"fair {i}"}],
                "max_tokens": 64,
                "reply_to": reply,
            }
        )
    submit_s = time.perf_counter() - t0
    ok = 0
    while ok < args.jobs:
        item = listener.blpop([reply], timeout=120)
        if item is None:
            break
        ok += b'"status":"succeeded"' in item[1]
    wall = time.perf_counter() - t0
    print(json.dumps({"ok": ok, "wall_s": wall, "submit_s": submit_s, "cpu_s": self_cpu_s() - cpu0}))
    client.close()
    listener.close()


if __name__ == "__main__":
    main()

"""What the memory watermark costs a submit: ``Client.submit`` with the check off, as shipped, and read per submit.

One private ``redis-server``; no worker (the queue only grows, far below any limit). Variants, each
a fresh ``Client``, interleaved ``--rounds`` times so that drift on a shared machine hits them alike:

* ``off``: ``LLMQ_REDIS_HIGH_WATERMARK=0`` (the baseline: no reading, no sizing);
* ``on``: as shipped (90 %, one ``INFO memory`` per second), on a Redis without ``maxmemory`` (jobs
  are not sized);
* ``on+maxmemory``: as shipped, Redis with a ``maxmemory`` far above use (each job's JSON is sized);
* ``every``: ``LLMQ_REDIS_MEMORY_CHECK_S=0`` (an ``INFO memory`` round trip before every submit),
  for scale.

Prints the producer's wall and CPU milliseconds per submit per variant (medians over the rounds) and
each as a ratio to ``off``, then one JSON line.

    .venv/bin/python bench/submit_bench.py [--submits 2000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import redis

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from _measure import load_average, self_cpu_s  # noqa: E402

from llmq.localredis import ManagedRedis  # noqa: E402
from producers import Client  # noqa: E402
from producers.settings import ProducerSettings  # noqa: E402

JOB = {"model": "openai:gpt-4o-mini", "messages": [{"role": "user", "content": "a short question"}], "max_tokens": 20}
VARIANTS: dict[str, dict[str, Any]] = {
    "off": {"redis_high_watermark": 0},
    "on": {},
    "on+maxmemory": {},
    "every": {"redis_memory_check_s": 0},
}


def _round(url: str, variant: str, submits: int, tag: str) -> tuple[float, float]:
    """(wall ms, CPU ms) per submit of one variant."""
    settings = ProducerSettings(redis_url=url, **VARIANTS[variant])
    with Client(settings=settings) as client:
        for i in range(50):  # warm: connections, scripts, the first reading
            client.submit({**JOB, "id": f"warm-{tag}-{i}"})
        cpu0, t0 = self_cpu_s(), time.perf_counter()
        for i in range(submits):
            client.submit({**JOB, "id": f"{tag}-{i}"})
        wall, cpu = time.perf_counter() - t0, self_cpu_s() - cpu0
    return wall * 1000 / submits, cpu * 1000 / submits


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--submits", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    figures: dict[str, list[tuple[float, float]]] = {v: [] for v in VARIANTS}
    with ManagedRedis() as plain, ManagedRedis(extra_args=["--maxmemory", "4gb"]) as limited:
        for r in range(args.rounds):
            for variant in VARIANTS:
                server = limited if variant == "on+maxmemory" else plain
                figures[variant].append(_round(server.url, variant, args.submits, f"{variant.replace('+', '-')}-{r}"))
                client = redis.Redis.from_url(server.url)
                client.flushall()
                client.close()
    base_wall = statistics.median(w for w, _ in figures["off"])
    base_cpu = statistics.median(c for _, c in figures["off"])
    out: dict[str, Any] = {"submits": args.submits, "rounds": args.rounds, "load": load_average()}
    print(f"{'variant':<14} {'wall ms/submit':>15} {'CPU ms/submit':>14} {'wall x off':>11} {'CPU x off':>10}")
    for variant, rows in figures.items():
        wall = statistics.median(w for w, _ in rows)
        cpu = statistics.median(c for _, c in rows)
        print(f"{variant:<14} {wall:>15.3f} {cpu:>14.3f} {wall / base_wall:>11.3f} {cpu / base_cpu:>10.3f}")
        out[variant] = {"wall_ms": round(wall, 4), "cpu_ms": round(cpu, 4), "wall_x": round(wall / base_wall, 3)}
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

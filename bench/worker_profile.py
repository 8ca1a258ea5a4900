"""Where a gevent worker's CPU goes at the queue bench's shape: py-spy samples, shares by function.

Starts a Redis, a simulator (``--upstream`` seconds per answer, 20 deltas) and one ``llmq worker -P
gevent -c 200``, fills the queue with the queue bench's jobs, and records the worker with py-spy
(``py-spy record -r 250 -f raw``; py-spy from the bench's scratch venv, ``queue_bench.py`` makes it,
or ``--py-spy``) for ``--seconds``. Samples of gevent's idle native threadpool thread are left out.
Prints the top functions (self and inclusive share of the samples) and, for each ``--share NAME``,
the share of the samples inside that function: what a feature costs the worker whether or not a
job uses it (``WebhookDeliverer._run``, ``Batcher._run``, ``Channel.fetch_many``...). Sample
shares hold on a loaded machine better than CPU seconds do (every function is slowed alike).

    .venv/bin/python bench/worker_profile.py --upstream 1 --share WebhookDeliverer._run --share Batcher._run
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from queue_bench import run_queue  # noqa: E402

from llmq.devstack import LocalStack  # noqa: E402
from producers.client import Client  # noqa: E402

IDLE = ("_WorkerGreenlet.run",)  # gevent's native threadpool thread waiting for work


def _frames(line: str) -> tuple[list[str], int]:
    stack, _, count = line.rstrip().rpartition(" ")
    return [f.split(" (")[0] for f in stack.split(";")], int(count)


def shares(raw: Path, names: list[str], top: int) -> dict[str, object]:
    own: collections.Counter[str] = collections.Counter()
    inside: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        frames, n = _frames(line)
        if any(f in IDLE for f in frames):
            continue
        total += n
        own[frames[-1]] += n
        for f in set(frames):
            inside[f] += n

    def pct(n: int) -> float:
        return round(100 * n / max(1, total), 2)

    return {
        "samples": total,
        "self_pct": {k: pct(v) for k, v in own.most_common(top)},
        "inclusive_pct": {k: pct(v) for k, v in inside.most_common(top)},
        "share_pct": {name: pct(inside[name]) for name in names},
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--upstream", type=float, default=1.0)
    p.add_argument("--seconds", type=int, default=15)
    p.add_argument("--share", action="append", default=[], help="a function (Class.method) to report the share of")
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--py-spy", default=str(Path.home() / ".cache" / "llmqueue-bench" / "peers" / "bin" / "py-spy"))
    p.add_argument("--worker-env", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--raw", help="keep py-spy's raw output here")
    args = p.parse_args()
    env = {k: v for k, v in os.environ.items() if k != "LLMQ_REDIS_URL"}
    raw = Path(args.raw or tempfile.mkstemp(prefix="worker-profile-", suffix=".txt")[1])
    with LocalStack(env=env) as stack:
        stack.start_redis()
        stack.start_simulator(tokens_per_s=20.0 / args.upstream if args.upstream else 0.0)
        extra = dict(kv.split("=", 1) for kv in args.worker_env)
        worker = stack.start_worker(pool="gevent", concurrency=200, name="profiled", extra_env=extra)
        stack.wait_for_workers(1, timeout=60)
        run_queue(stack, 200, [worker])  # warm: imports, pools, connections
        client = Client(stack.redis_url)
        rate = 200 / max(args.upstream, 0.05)  # enough jobs to keep 200 slots busy for the recording
        for i in range(int(rate * (args.seconds + 5))):
            client.submit(
                {
                    "model": "openai:gpt-4o-mini",
                    "messages": [{"role": "user", "content": f"profile {time.time_ns()} {i}"}],
                    "max_tokens": 64,
                }
            )
        client.close()
        argv = [args.py_spy, "record", "-r", "250", "-d", str(args.seconds), "-f", "raw", "-o", str(raw)]
        subprocess.run([*argv, "-p", str(worker.pid)], check=True, capture_output=True)
    result = shares(raw, args.share, args.top)
    for name in args.share:
        print(f"{result['share_pct'][name]:6.2f} %  {name}")  # type: ignore[index]
    print(json.dumps({"bench": "worker_profile", "upstream_s": args.upstream, **result}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The ledger's reserve + settle per job call: the worker's CPU and Redis' CPU, A/B against another tree.

One local Redis; ``--calls`` reserve/settle pairs from one thread, for a job without tags or user
(``plain``, what every job pays) and with three tags and a user (``tagged``), alternating
``--rounds`` times. The worker side is this process's CPU (``self_cpu_s``), Redis' is its
``used_cpu_user + used_cpu_sys``. With ``--compare PATH`` the same runs use the ledger of another
checkout (a child process with ``PYTHONPATH=PATH``) as the baseline, so a change to the scripts or
their arguments is measured against the code before it in the same run (the machine is shared: read
the ratios). One JSON line at the end.

    .venv/bin/python bench/ledger_bench.py --compare /tmp/main-tree
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def measure(url: str, calls: int, tagged: bool) -> dict[str, float]:
    """Run in the process whose ``workers`` package is being measured."""
    sys.path.insert(0, str(HERE))
    import redis
    from _measure import self_cpu_s

    from workers.accounting.ledger import Ledger

    client = redis.Redis.from_url(url)
    client.flushdb()
    ledger = Ledger(client)
    extra: dict[str, Any] = {}
    if tagged and "tags" in Ledger.reserve.__code__.co_varnames:
        extra = {"tags": ["checkout", "beta", "exp-7"], "user": "u-1", "model": "openai:gpt-4o-mini"}
    elif "model" in Ledger.reserve.__code__.co_varnames:
        extra = {"model": "openai:gpt-4o-mini"}
    for i in range(200):  # warm-up: scripts loaded, connection open
        ledger.settle(ledger.reserve(f"warm-{i}", 1, "acme", 0.01, **extra), 0.001)

    def redis_cpu() -> float:
        info = client.info("cpu")
        return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])

    cpu0, rcpu0 = self_cpu_s(), redis_cpu()
    for i in range(calls):
        ledger.settle(ledger.reserve(f"job-{i}", 1, f"t{i % 50}", 0.01, **extra), 0.001 + (i % 7) / 10_000)
    cpu, rcpu = self_cpu_s() - cpu0, redis_cpu() - rcpu0
    return {"worker_us_per_call": round(1e6 * cpu / calls, 1), "redis_us_per_call": round(1e6 * rcpu / calls, 1)}


def run_child(tree: Path, url: str, calls: int, tagged: bool) -> dict[str, float]:
    code = (
        f"import sys, json; sys.path.insert(0, {str(HERE)!r}); import ledger_bench; "
        f"print(json.dumps(ledger_bench.measure({url!r}, {calls}, {tagged})))"
    )
    env = {**os.environ, "PYTHONPATH": str(tree)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--calls", type=int, default=5000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--compare", help="another checkout whose ledger is the baseline")
    args = p.parse_args()
    sys.path.insert(0, str(ROOT))
    from llmq.devstack import LocalStack

    runs: dict[str, list[dict[str, float]]] = {}
    with LocalStack(env=dict(os.environ)) as stack:
        url = stack.start_redis()
        for _ in range(args.rounds):
            for tagged in (False, True):
                name = "tagged" if tagged else "plain"
                runs.setdefault(name, []).append(run_child(ROOT, url, args.calls, tagged))
                if args.compare and not tagged:
                    runs.setdefault("plain_base", []).append(run_child(Path(args.compare), url, args.calls, False))

    def median(rows: list[dict[str, float]], key: str) -> float:
        return sorted(r[key] for r in rows)[len(rows) // 2]

    summary: dict[str, Any] = {"bench": "ledger_bench", "calls": args.calls, "rounds": args.rounds}
    for name, rows in runs.items():
        summary[name] = {k: median(rows, k) for k in rows[0]} | {"runs": rows}
        print(
            f"{name:<11} worker {summary[name]['worker_us_per_call']:>7} us/call   redis {summary[name]['redis_us_per_call']:>6} us/call"
        )
    if "plain_base" in summary:
        for k in ("worker_us_per_call", "redis_us_per_call"):
            summary[f"plain_over_base_{k}"] = round(summary["plain"][k] / summary["plain_base"][k], 3)
        print({k: v for k, v in summary.items() if k.startswith("plain_over")})
    print(json.dumps(summary, separators=(",", ":")))


if __name__ == "__main__":
    main()

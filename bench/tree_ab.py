"""The queue path of two code trees A/B, interleaved: what a span of commits costs a job.

``queue_bench.py --compare-env PYTHONPATH=<older tree>`` swaps the worker's code only, which breaks
when the producer and the worker changed together (this round's schedule, for one: a job is queued
in a schedule the older worker does not read). This runs each tree's own ``bench/queue_bench.py``
(its producer, worker, Redis and simulator; ``PYTHONPATH`` set to that tree, run from a scratch
directory so no other checkout is imported), queue path only, the trees alternating ``--rounds``
times so drift on a shared machine hits both alike, and reports per latency the median worker CPU
per job and jobs/s of each tree and their ratios. One JSON line at the end.

    git archive 9bf29e9 | tar -x -C /tmp/older      # e.g. main before this round's features
    .venv/bin/python bench/tree_ab.py --tree /tmp/older --rounds 3 --latencies 0,1 --jobs 1000
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def run_tree(tree: Path, latency: str, args: argparse.Namespace) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    env.pop("LLMQ_REDIS_URL", None)
    argv = [sys.executable, str(tree / "bench" / "queue_bench.py"), "--paths", "queue", "--no-litellm"]
    argv += ["--latencies", latency, "--jobs", str(args.jobs), "--concurrency", str(args.concurrency)]
    with tempfile.TemporaryDirectory(prefix="tree-ab-") as scratch:
        proc = subprocess.run(argv, cwd=scratch, env=env, capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(f"{tree} failed:\n{proc.stderr[-3000:]}")
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    [config] = summary["configs"].values()
    queue = config["paths"]["queue"]
    return {"cpu_ms_per_job": queue["cpu_ms_per_job"], "jobs_per_s": queue["jobs_per_s"], "ok": queue["ok"]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tree", required=True, help="the other tree (B); A is this checkout")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--latencies", default="0,1")
    p.add_argument("--jobs", type=int, default=1000)
    p.add_argument("--concurrency", type=int, default=200)
    args = p.parse_args()
    trees = {"a": HERE.parent, "b": Path(args.tree).resolve()}
    out: dict[str, Any] = {}
    for latency in args.latencies.split(","):
        runs: dict[str, list[dict[str, Any]]] = {"a": [], "b": []}
        for k in range(args.rounds):
            for name in ("b", "a") if k % 2 == 0 else ("a", "b"):
                row = run_tree(trees[name], latency, args)
                runs[name].append(row)
                print(f"{latency} s round {k + 1} {name}: {row}", flush=True)
        med = {
            name: {
                "cpu_ms_per_job": statistics.median(r["cpu_ms_per_job"] for r in rows),
                "jobs_per_s": statistics.median(r["jobs_per_s"] for r in rows),
                "cpu_ms_per_job_runs": [r["cpu_ms_per_job"] for r in rows],
                "jobs_per_s_runs": [r["jobs_per_s"] for r in rows],
            }
            for name, rows in runs.items()
        }
        out[f"{latency}s"] = {
            **med,
            "a_over_b_cpu_per_job": round(med["a"]["cpu_ms_per_job"] / med["b"]["cpu_ms_per_job"], 3),
            "a_over_b_jobs_per_s": round(med["a"]["jobs_per_s"] / med["b"]["jobs_per_s"], 3),
        }
        print(f"{latency} s: {json.dumps(out[f'{latency}s'])}", flush=True)
    print(json.dumps({"bench": "tree_ab", "a": str(trees["a"]), "b": str(trees["b"]), "results": out}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

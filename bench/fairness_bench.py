"""Scheduling: the interactive job behind a bulk backlog, the weighted split, and what the scheduler costs.

One Redis, one simulator, ``llmq worker`` processes and producers, all real, in one run:

* ``backlog`` - issue #26's measurement: one worker with 30 slots, 1 s calls, 600 ``bulk`` jobs of
  one tenant queued, then one ``interactive`` job of another: its wait (submit to result) and how
  many jobs finished before it after its submit (FIFO: all 600, 21.5 s).
* ``split`` - two tenants weighted 3 : 1 in the routes file, 1,000 jobs each queued before the worker
  starts: the split of the first 1,200 completions (both still have work).
* ``cost`` - one tenant, one class (what every job is without the feature): ``--jobs`` jobs through
  this tree's scheduler and through plain FIFO (the tree before the scheduler: kombu's list, the
  previous fetch script; producer and worker both run from it), ``--rounds`` A/B rounds on fresh
  workers, alternating so drift on a shared machine hits both alike; jobs/s, worker CPU per job and
  Redis CPU per job, medians, and their ratios (of the medians, and the median of each round's
  paired ratio). The FIFO tree is ``--fifo-tree``, else ``git archive`` of the commit before
  ``workers/connections/lua/fetch.lua`` was added. The scheduler's tree is the one this script runs
  from: run it from a checkout of the tree to measure (``git archive <commit> | tar -x -C DIR``, then
  ``DIR/bench/fairness_bench.py --fifo-tree ...``). Against the tree before the scheduler, main also
  counts every change landed since; the scheduler's cost alone is its commits on the tree they
  landed on (README, "Benchmarks").

The last line printed is one JSON object; ``--json`` also writes it to a file.

    .venv/bin/python bench/fairness_bench.py                    # all three, 2,000-job cost rounds x 3
    .venv/bin/python bench/fairness_bench.py --only cost --rounds 5 --latency 0
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import psutil
import redis

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

from _measure import load_average  # noqa: E402

from llmq.devstack import LocalStack  # noqa: E402
from producers.client import Client  # noqa: E402
from workers.contract import CompletionResult  # noqa: E402

MODEL = "openai:gpt-4o-mini"


def _sim_config(stack: LocalStack, **values: float) -> None:
    request = urllib.request.Request(
        f"{stack.simulator_url}/_sim/config", data=json.dumps(values).encode(), method="POST"
    )
    request.add_header("content-type", "application/json")
    urllib.request.urlopen(request, timeout=10).read()


def _workers(stack: LocalStack, count: int, concurrency: int, pool: str, env: dict[str, str], name: str) -> list[Any]:
    procs = [
        stack.start_worker(pool=pool, concurrency=concurrency, name=f"{name}{i}", extra_env=env) for i in range(count)
    ]
    stack.wait_for_workers(count, timeout=120)
    return procs


def _stop(procs: list[Any]) -> None:
    for p in procs:
        os.killpg(p.pid, signal.SIGQUIT)
    for p in procs:
        try:
            p.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(10)


def _job(job_id: str, tenant: str, priority: str, reply: str) -> dict[str, Any]:
    return {
        "id": job_id, "model": MODEL, "messages": [{"role": "user", "content": job_id}], "max_tokens": 5,
        "stream": False, "tenant": tenant, "priority": priority, "reply_to": reply,
    }  # fmt: skip


# --- backlog and split: this tree's scheduler ------------------------------------------------------


def run_backlog(stack: LocalStack, args: argparse.Namespace) -> dict[str, Any]:
    _sim_config(stack, latency=1.0, tokens_per_s=0.0)
    procs = _workers(stack, 1, 30, args.pool, {}, "backlog")
    r = redis.Redis.from_url(stack.redis_url)
    reply = f"llmq:reply:backlog-{time.time_ns()}"
    try:
        with Client(stack.redis_url) as client:
            for n in range(600):
                client.submit(_job(f"bulk-{n}-{reply[-6:]}", "bulk-tenant", "bulk", reply))
            deadline = time.monotonic() + 60
            while r.llen(reply) < 30 and time.monotonic() < deadline:  # the first wave ran: a backlog
                time.sleep(0.05)
            before = r.llen(reply)
            job_id = f"web-{reply[-6:]}"
            t0 = time.perf_counter()
            client.submit(_job(job_id, "web", "interactive", reply))
            result = client.result(job_id, timeout=300)
            waited = time.perf_counter() - t0
            order = [CompletionResult.model_validate_json(raw).id for raw in r.lrange(reply, before, -1)]
            deadline = time.monotonic() + 300
            while r.llen(reply) < 601 and time.monotonic() < deadline:
                time.sleep(0.2)
            drained_s = time.perf_counter() - t0
        return {
            "interactive_wait_s": round(waited, 3),
            "interactive_rank_after_submit": order.index(job_id) + 1,
            "status": result.status,
            "bulk_done": r.llen(reply) - 1,
            "all_done_s_after_submit": round(drained_s, 1),
        }
    finally:
        _stop(procs)
        r.close()


def run_split(stack: LocalStack, args: argparse.Namespace, config: Path) -> dict[str, Any]:
    _sim_config(stack, latency=0.0, tokens_per_s=0.0)
    r = redis.Redis.from_url(stack.redis_url)
    reply = f"llmq:reply:split-{time.time_ns()}"
    with Client(stack.redis_url) as client:
        for tenant in ("light", "heavy"):
            for n in range(1000):
                client.submit(_job(f"{tenant}-{n}-{reply[-6:]}", tenant, "normal", reply))
        procs = _workers(stack, 1, 50, args.pool, {"LLMQ_CONFIG": str(config)}, "split")
        try:
            deadline = time.monotonic() + 600
            while r.llen(reply) < 1200 and time.monotonic() < deadline:
                time.sleep(0.1)
            first = [CompletionResult.model_validate_json(raw).tenant for raw in r.lrange(reply, 0, 1199)]
            client.celery.control.purge()
        finally:
            _stop(procs)
    counts = Counter(first)
    windows = [Counter(first[i : i + 200])["heavy"] / 200 for i in range(0, len(first), 200)]
    r.close()
    return {
        "weights": "heavy 3 : light 1",
        "first_1200": dict(counts),
        "heavy_over_light": round(counts["heavy"] / max(1, counts["light"]), 3),
        "heavy_share_per_200": [round(w, 3) for w in windows],
    }


# --- cost: scheduler vs FIFO, same run ------------------------------------------------------------------


def fifo_tree(args: argparse.Namespace) -> Path:
    if args.fifo_tree:
        return Path(args.fifo_tree)
    added = subprocess.run(
        ["git", "-C", str(ROOT), "log", "--diff-filter=A", "--format=%H", "--", "workers/connections/lua/fetch.lua"],
        capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    if not added:
        raise SystemExit("no FIFO tree: give --fifo-tree (a checkout from before the scheduler)")
    target = Path(tempfile.mkdtemp(prefix="llmq-fifo-tree-"))
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", f"{added[-1]}^"], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive.stdout, check=True)
    return target


def _redis_cpu(r: redis.Redis) -> float:
    info = r.info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


def run_cost_once(stack: LocalStack, args: argparse.Namespace, tree: Path, name: str) -> dict[str, Any]:
    env = {"PYTHONPATH": str(tree)}
    procs = _workers(stack, args.procs, args.concurrency, args.pool, env, name)
    r = redis.Redis.from_url(stack.redis_url)
    client = [sys.executable, str(HERE / "_fairness_client.py"), "--redis", stack.redis_url]
    try:
        subprocess.run(
            [*client, "--jobs", "100", "--tag", f"{name}-warm"],
            env={**os.environ, **env},
            check=True,
            capture_output=True,
        )
        workers = [psutil.Process(p.pid) for p in procs]
        cpu0 = sum(sum(w.cpu_times()[:2]) for w in workers)
        rcpu0 = _redis_cpu(r)
        out = subprocess.run(
            [*client, "--jobs", str(args.jobs), "--tag", f"{name}-{time.time_ns()}"],
            env={**os.environ, **env}, check=True, capture_output=True, text=True,
        )  # fmt: skip
        row = json.loads(out.stdout.strip().splitlines()[-1])
        cpu = sum(sum(w.cpu_times()[:2]) for w in workers) - cpu0
        rcpu = _redis_cpu(r) - rcpu0
    finally:
        _stop(procs)
        r.close()
    ok = max(1, row["ok"])
    return {
        "ok": row["ok"],
        "jobs_per_s": round(row["ok"] / row["wall_s"], 1),
        "worker_cpu_ms_per_job": round(1000 * cpu / ok, 3),
        "redis_cpu_ms_per_job": round(1000 * rcpu / ok, 4),
        "producer_cpu_ms_per_job": round(1000 * row["cpu_s"] / ok, 3),
    }


def run_cost(stack: LocalStack, args: argparse.Namespace) -> dict[str, Any]:
    _sim_config(stack, latency=args.latency, tokens_per_s=20.0 / args.latency if args.latency else 0.0)
    fifo = fifo_tree(args)
    runs: dict[str, list[dict[str, Any]]] = {"fifo": [], "scheduler": []}
    for k in range(args.rounds):
        order = (("fifo", fifo), ("scheduler", ROOT)) if k % 2 == 0 else (("scheduler", ROOT), ("fifo", fifo))
        for name, tree in order:
            runs[name].append(run_cost_once(stack, args, tree, f"{name}{k}-"))
            print(f"round {k + 1} {name}: {runs[name][-1]}", flush=True)

    def ratio(key: str) -> float:
        return round(medians["scheduler"][key] / medians["fifo"][key], 3)

    def paired(key: str) -> float:
        # each round's scheduler run over the FIFO run next to it, then the median: drift between
        # rounds (a shared machine's load) cancels within a pair
        return round(
            statistics.median(s[key] / f[key] for s, f in zip(runs["scheduler"], runs["fifo"], strict=True)), 3
        )

    def total(row: dict[str, Any]) -> float:
        return float(row["worker_cpu_ms_per_job"] + row["redis_cpu_ms_per_job"] + row["producer_cpu_ms_per_job"])

    for rows in runs.values():
        for row in rows:
            row["total_cpu_ms_per_job"] = round(total(row), 3)
    medians = {
        name: {key: statistics.median(row[key] for row in rows) for key in rows[0] if key != "ok"}
        for name, rows in runs.items()
    }

    return {
        "upstream_s": args.latency,
        "jobs": args.jobs,
        "concurrency": args.concurrency,
        "procs": args.procs,
        "pool": args.pool,
        "rounds": runs,
        "median": medians,
        "scheduler_over_fifo": {
            "jobs_per_s": ratio("jobs_per_s"),
            "worker_cpu_per_job": ratio("worker_cpu_ms_per_job"),
            "redis_cpu_per_job": ratio("redis_cpu_ms_per_job"),
            "producer_cpu_per_job": ratio("producer_cpu_ms_per_job"),
            "total_cpu_per_job": ratio("total_cpu_ms_per_job"),
        },
        "scheduler_over_fifo_paired": {
            "jobs_per_s": paired("jobs_per_s"),
            "worker_cpu_per_job": paired("worker_cpu_ms_per_job"),
            "redis_cpu_per_job": paired("redis_cpu_ms_per_job"),
            "producer_cpu_per_job": paired("producer_cpu_ms_per_job"),
            "total_cpu_per_job": paired("total_cpu_ms_per_job"),
        },
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", choices=("backlog", "split", "cost"), action="append")
    p.add_argument("--jobs", type=int, default=2000, help="jobs per cost round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--concurrency", type=int, default=200)
    p.add_argument("--procs", type=int, default=1, help="worker processes in the cost rounds")
    p.add_argument("--pool", default="gevent")
    p.add_argument("--latency", type=float, default=0.0, help="upstream seconds in the cost rounds")
    p.add_argument("--fifo-tree", help="a checkout from before the scheduler (default: git archive of it)")
    p.add_argument("--json", help="also write the result to this file")
    args = p.parse_args()
    parts = args.only or ["backlog", "split", "cost"]
    result: dict[str, Any] = {"bench": "fairness_bench", "load_before": load_average()}
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMQ_")}
    with LocalStack(env=env) as stack, tempfile.TemporaryDirectory() as tmp:
        stack.start_redis()
        stack.start_simulator()
        config = Path(tmp) / "llmq.toml"
        config.write_text("[tenants.heavy]\nweight = 3\n")
        if "backlog" in parts:
            result["backlog"] = run_backlog(stack, args)
            print(f"backlog: {result['backlog']}", flush=True)
        if "split" in parts:
            result["split"] = run_split(stack, args, config)
            print(f"split: {result['split']}", flush=True)
        if "cost" in parts:
            result["cost"] = run_cost(stack, args)
            print(f"cost, scheduler over FIFO (medians): {result['cost']['scheduler_over_fifo']}", flush=True)
            print(f"cost, scheduler over FIFO (paired): {result['cost']['scheduler_over_fifo_paired']}", flush=True)
    result["load_after"] = load_average()
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, separators=(",", ":")), flush=True)


if __name__ == "__main__":
    main()

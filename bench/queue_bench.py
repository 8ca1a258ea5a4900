"""Queue path vs raw asyncio client, direct call and LiteLLM Router: same simulator, same run, one JSON line.

For each configuration (upstream latency, concurrency, worker processes) it starts one Redis and
one simulator (20 deltas per answer, spread over the latency; 0 s sends them at once) and runs,
one after another, each path on the same job count:

* ``raw``     — one asyncio process, aiohttp + redis.asyncio PUBLISH per delta (the notes' limit);
* ``direct``  — our provider + HTTP client + coalescing publisher in a thread pool, no queue;
* ``queue``   — producer -> Redis -> ``celery worker -P gevent`` process(es) -> simulator, results
  collected through a reply list; CPU and peak RSS are the worker's;
* ``litellm`` — LiteLLM's Router (two deployments, ``num_retries=2``, a fallback) streaming from the
  same simulator, as the shared peer harness runs it (``_peer_client.py``). LiteLLM is installed by
  this script into its own virtualenv under a cache directory (``--peer-venv``, default
  ``~/.cache/llmqueue-bench/peers``), never into the project's; its process refuses every
  non-loopback connection. It does not publish its deltas anywhere (the others do).

With ``--procs 2`` every path runs as two processes splitting the jobs (two workers for ``queue``),
concurrency per process as given. CPU per job is the sum over the path's processes; peak RSS is the
largest single process. ``--scaling`` runs the curve (1 s upstream: concurrency 50, 200, 1,000 on one
process, then 200 on each of two) and can draw it (``--plot``, matplotlib from the same scratch venv).

The last line printed is one JSON object: per configuration, per path ``jobs_per_s``,
``cpu_ms_per_job``, ``peak_rss_mb``, and the ratios ``queue_over_raw_jobs_per_s``,
``queue_over_litellm_jobs_per_s``, ``queue_over_litellm_cpu_per_job``, ``queue_rss_over_litellm``;
with the machine's load average before and after (the machine is shared: compare ratios).

    .venv/bin/python bench/queue_bench.py                  # 1,000 jobs, concurrency 200, upstream 0 s and 1 s
    .venv/bin/python bench/queue_bench.py --quick          # smoke: 150 jobs, concurrency 50
    .venv/bin/python bench/queue_bench.py --scaling --plot bench/scaling.png
    .venv/bin/python bench/queue_bench.py --worker-env LLMQ_TASK_EVENTS=0   # A/B a worker setting
    .venv/bin/python bench/queue_bench.py --compare-job '{"cache": {"ttl_s": 60}}' --rounds 3   # A/B job fields
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import redis

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from _measure import load_average, proc_peak_rss_mb  # noqa: E402

from llmq.devstack import LocalStack  # noqa: E402
from producers.client import Client  # noqa: E402

#: What the scratch virtualenv holds (pinned: the version the shared peer figures were taken with).
PEER_REQUIREMENTS = ["litellm==1.110.2", "aiohttp>=3.13,<4", "matplotlib>=3.8,<4"]
PATHS = ("raw", "direct", "queue", "litellm")


# --- the scratch virtualenv --------------------------------------------------------------------------


def peer_python(venv: Path) -> Path:
    """The scratch venv's Python, created and filled on first use (a stamp skips pip afterwards)."""
    python = venv / "bin" / "python"
    stamp = venv / ".bench-requirements"
    want = hashlib.sha256("\n".join(PEER_REQUIREMENTS).encode()).hexdigest()[:16]
    if python.exists() and stamp.exists() and stamp.read_text() == want:
        return python
    print(f"installing {', '.join(PEER_REQUIREMENTS)} into {venv} (once; a few minutes)", flush=True)
    venv.parent.mkdir(parents=True, exist_ok=True)
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", *PEER_REQUIREMENTS], check=True)
    stamp.write_text(want)
    return python


# --- the paths ---------------------------------------------------------------------------------------


def _split(jobs: int, procs: int) -> list[int]:
    return [jobs // procs + (1 if i < jobs % procs else 0) for i in range(procs)]


def _run_children(argvs: list[list[str]]) -> dict[str, Any]:
    """Run client processes side by side; merge their JSON lines (wall = the slowest)."""
    children = [subprocess.Popen(a, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for a in argvs]
    rows = []
    for child in children:
        out, err = child.communicate(timeout=1800)
        if child.returncode != 0:
            raise RuntimeError(f"{argvs[0][1]} failed ({child.returncode}):\n{err[-2000:]}")
        rows.append(json.loads(out.strip().splitlines()[-1]))
    merged: dict[str, Any] = {
        "ok": sum(r["ok"] for r in rows),
        "wall_s": max(r["wall_s"] for r in rows),
        "cpu_s": sum(r["cpu_s"] for r in rows),
        "peak_rss_mb": max(r["peak_rss_mb"] for r in rows),
        "errors": {},
    }
    for r in rows:
        for k, v in r["errors"].items():
            merged["errors"][k] = merged["errors"].get(k, 0) + v
        for k in ("deltas_per_job", "nonlocal_attempts", "litellm_version"):
            if k in r:
                merged[k] = r[k]
    return merged


def run_raw(stack: LocalStack, jobs: int, concurrency: int, procs: int) -> dict[str, Any]:
    url = f"{stack.simulator_url}/v1/chat/completions"
    head = [sys.executable, str(HERE / "_raw_client.py"), "--url", url, "--redis", stack.redis_url]
    return _run_children([[*head, "--jobs", str(n), "--concurrency", str(concurrency)] for n in _split(jobs, procs)])


def run_direct(stack: LocalStack, jobs: int, concurrency: int, procs: int) -> dict[str, Any]:
    base = f"{stack.simulator_url}/v1"
    head = [sys.executable, str(HERE / "_direct_client.py"), "--base-url", base, "--redis", stack.redis_url]
    return _run_children(
        [
            [*head, "--jobs", str(n), "--concurrency", str(concurrency), "--tag", f"{time.time_ns()}-{k}"]
            for k, n in enumerate(_split(jobs, procs))
        ]
    )


def run_litellm(stack: LocalStack, jobs: int, concurrency: int, procs: int, python: Path) -> dict[str, Any]:
    base = f"{stack.simulator_url}/v1"
    env_free = [str(python), str(HERE / "_peer_client.py"), "--base-url", base]
    return _run_children(
        [[*env_free, "--jobs", str(n), "--concurrency", str(concurrency)] for n in _split(jobs, procs)]
    )


def _workers_cpu(workers: list[psutil.Process]) -> float:
    total = 0.0
    for w in workers:
        try:
            t = w.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def run_queue(
    stack: LocalStack, jobs: int, workers: list[subprocess.Popen[bytes]], extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    """``jobs`` distinct jobs (their prompts never repeat, across runs too) with ``extra`` job fields."""
    procs = [psutil.Process(w.pid) for w in workers]
    nonce = time.time_ns()
    reply = f"llmq:reply:bench-{nonce}"
    client = Client(stack.redis_url)
    listener = redis.Redis.from_url(stack.redis_url)
    io0 = _redis_io(listener)
    cpu0 = _workers_cpu(procs)
    t0 = time.perf_counter()
    for i in range(jobs):
        client.submit(
            {
                "model": "openai:gpt-4o-mini",
                "messages": [{"role": "user", "content": f"queue {nonce} {i}"}],
                "max_tokens": 64,
                "reply_to": reply,
                **(extra or {}),
            }
        )
    submit_s = time.perf_counter() - t0
    ok = errors = 0
    run_s: list[float] = []
    queued_s: list[float] = []
    while ok + errors < jobs:
        item = listener.blpop([reply], timeout=120)
        if item is None:
            break
        if b'"status":"succeeded"' in item[1]:
            ok += 1
            timings = json.loads(item[1])["timings"]
            run_s.append(timings["total_s"])
            queued_s.append(timings["queued_s"] or 0.0)
        else:
            errors += 1
    wall = time.perf_counter() - t0
    cpu = _workers_cpu(procs) - cpu0
    io = {k: v - io0[k] for k, v in _redis_io(listener).items()}
    client.close()
    listener.close()
    return {
        "ok": ok,
        "errors": {"failed": errors} if errors else {},
        "wall_s": wall,
        "cpu_s": cpu,
        "peak_rss_mb": max(proc_peak_rss_mb(w.pid) for w in workers),
        # a job's time in the worker (claim to result): ~the upstream's when the worker keeps up
        "run_s_p50": round(sorted(run_s)[len(run_s) // 2], 3) if run_s else None,
        # how many slots held a running job on average (Little's law: the runs' total over the wall
        # time): the worker's concurrency when it is never short of jobs
        "in_flight_mean": round(sum(run_s) / wall, 1),
        # submit to claim, and how long the producer took to submit them all
        "queued_s_p50": round(sorted(queued_s)[len(queued_s) // 2], 3) if queued_s else None,
        "queued_s_max": round(max(queued_s), 3) if queued_s else None,
        "submit_s": round(submit_s, 3),
        # the whole Redis server's (producer, broker, workers): reads ~ client round trips
        "redis_reads_per_job": round(io["total_reads_processed"] / max(1, jobs), 1),
        "redis_commands_per_job": round(io["total_commands_processed"] / max(1, jobs), 1),
        # new connections the server accepted (producer, broker, workers): ~0 once pools are warm
        "redis_connections": io["total_connections_received"],
    }


def _side_processes(stack: LocalStack) -> dict[str, psutil.Process]:
    """The processes every path shares the machine with: the simulator and Redis."""
    found: dict[str, psutil.Process] = {}
    for name, proc in stack.processes:
        if name == "simulator":
            found["simulator"] = psutil.Process(proc.pid)
    with redis.Redis.from_url(stack.redis_url) as client:
        found["redis"] = psutil.Process(int(client.info("server")["process_id"]))
    return found


def measured(stack: LocalStack, run: Any) -> dict[str, Any]:
    """``run()``'s row with what the machine did meanwhile: the simulator's and Redis's CPU seconds,
    and how busy the whole machine was (all cores; ``machine_busy_pct`` 100 = every core busy)."""
    sides = _side_processes(stack)

    def cpu(p: psutil.Process) -> float:
        t = p.cpu_times()
        return float(t.user + t.system)

    side0 = {name: cpu(p) for name, p in sides.items()}
    machine0 = psutil.cpu_times()
    row: dict[str, Any] = run()
    machine1 = psutil.cpu_times()
    for name, p in sides.items():
        row[f"{name}_cpu_s"] = cpu(p) - side0[name]
    idle = (machine1.idle + machine1.iowait) - (machine0.idle + machine0.iowait)
    total = sum(machine1) - sum(machine0)
    row["machine_busy_pct"] = round(100 * (1 - idle / total)) if total > 0 else None
    return row


def _redis_io(client: redis.Redis) -> dict[str, int]:
    """The server's read events (one per batch of commands a client's socket delivered) and commands."""
    stats = client.info("stats")
    keys = ("total_reads_processed", "total_commands_processed", "total_connections_received")
    return {k: int(stats.get(k, 0)) for k in keys}


def _start_workers(
    stack: LocalStack, args: argparse.Namespace, concurrency: int, procs: int, env: dict[str, str], name: str
) -> list[subprocess.Popen[bytes]]:
    workers = [
        stack.start_worker(pool=args.pool, concurrency=concurrency, name=f"{name}{i}", extra_env=env)
        for i in range(procs)
    ]
    stack.wait_for_workers(procs)
    return workers


def _stop_workers(workers: list[subprocess.Popen[bytes]]) -> None:
    """Every job of theirs has ended (acked): a cold shutdown, then SIGKILL if it lingers."""
    for w in workers:
        os.killpg(w.pid, signal.SIGQUIT)
    for w in workers:
        try:
            w.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(w.pid, signal.SIGKILL)
            w.wait(10)


# --- one configuration --------------------------------------------------------------------------------


def _summary(r: dict[str, Any], procs: int) -> dict[str, Any]:
    ok = max(1, int(r["ok"]))
    row = {
        "ok": int(r["ok"]),
        "errors": r["errors"],
        "jobs_per_s": round(r["ok"] / r["wall_s"], 1),
        "jobs_per_s_per_core": round(r["ok"] / r["wall_s"] / procs, 1),
        "cpu_ms_per_job": round(1000 * r["cpu_s"] / ok, 2),
        "peak_rss_mb": round(r["peak_rss_mb"], 1),
        "cpu_pct_of_core": round(100 * r["cpu_s"] / r["wall_s"] / procs),
    }
    for side in ("simulator", "redis"):  # what the path made the shared processes do (measured())
        if f"{side}_cpu_s" in r:
            row[f"{side}_cpu_ms_per_job"] = round(1000 * r[f"{side}_cpu_s"] / ok, 2)
    if "machine_busy_pct" in r:
        row["machine_busy_pct"] = r["machine_busy_pct"]
    for k in (
        "deltas_per_job",
        "nonlocal_attempts",
        "litellm_version",
        "run_s_p50",
        "in_flight_mean",
        "queued_s_p50",
        "queued_s_max",
        "submit_s",
        "redis_reads_per_job",
        "redis_commands_per_job",
        "redis_connections",
    ):
        if k in r:
            row[k] = r[k]
    return row


def _ratio(a: float, b: float) -> float | None:
    return round(a / b, 3) if b else None


def run_config(
    args: argparse.Namespace, latency: float, concurrency: int, procs: int, python: Path | None
) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if k != "LLMQ_REDIS_URL"}
    worker_env = dict(kv.split("=", 1) for kv in args.worker_env)
    paths: dict[str, dict[str, Any]] = {}
    load0 = load_average()
    with LocalStack(env=env) as stack:
        stack.start_redis()
        stack.start_simulator(tokens_per_s=20.0 / latency if latency else 0.0)
        workers = _start_workers(stack, args, concurrency, procs, worker_env, "benchworker")
        run_queue(stack, min(100 * procs, args.jobs), workers)  # warm-up: imports, pools, connections
        if "raw" in args.paths:
            paths["raw"] = _summary(measured(stack, lambda: run_raw(stack, args.jobs, concurrency, procs)), procs)
        if "direct" in args.paths:
            paths["direct"] = _summary(measured(stack, lambda: run_direct(stack, args.jobs, concurrency, procs)), procs)
        job_a = json.loads(args.job_extra) if args.job_extra else None
        paths["queue"] = _summary(measured(stack, lambda: run_queue(stack, args.jobs, workers, job_a)), procs)
        if args.compare_job:
            # the same workers, jobs with other fields (e.g. a cache option: every job a miss), A and B
            # alternating --rounds times
            job_b = json.loads(args.compare_job)
            runs_ab: dict[str, list[dict[str, Any]]] = {"queue": [paths["queue"]], "queue_b": []}
            for k in range(args.rounds):
                for name, extra in (("queue_b", job_b), ("queue", job_a)):
                    if name == "queue" and k == 0:
                        continue
                    runs_ab[name].append(_summary(run_queue(stack, args.jobs, workers, extra), procs))
            for name, rows in runs_ab.items():
                best = sorted(rows, key=lambda r: r["cpu_ms_per_job"])[len(rows) // 2]
                paths[name] = {**best, "cpu_ms_per_job_runs": [r["cpu_ms_per_job"] for r in rows]}
        if args.compare_env:
            # the same queue path with other worker settings (or code: PYTHONPATH=<an older tree>), A and
            # B alternating --rounds times on fresh workers so drift on a shared machine hits both alike
            other = {**worker_env, **dict(kv.split("=", 1) for kv in args.compare_env)}
            runs: dict[str, list[dict[str, Any]]] = {"queue": [paths["queue"]], "queue_b": []}
            for k in range(args.rounds):
                for name, env_ in (("queue_b", other), ("queue", worker_env)):
                    if name == "queue" and k == 0:
                        continue  # round 1 of A is the run above
                    _stop_workers(workers)
                    workers = _start_workers(stack, args, concurrency, procs, env_, f"bench{name}{k}")
                    run_queue(stack, min(100 * procs, args.jobs), workers)
                    runs[name].append(_summary(run_queue(stack, args.jobs, workers), procs))
            for name, rows in runs.items():
                best = sorted(rows, key=lambda r: r["cpu_ms_per_job"])[len(rows) // 2]  # the median run
                paths[name] = {
                    **best,
                    "cpu_ms_per_job_runs": [r["cpu_ms_per_job"] for r in rows],
                    "run_s_p50_runs": [r.get("run_s_p50") for r in rows],
                }
        if python is not None and "litellm" in args.paths:
            paths["litellm"] = _summary(
                measured(stack, lambda: run_litellm(stack, args.jobs, concurrency, procs, python)), procs
            )
    q, raw, direct, lite = paths["queue"], paths.get("raw"), paths.get("direct"), paths.get("litellm")
    ratios: dict[str, float | None] = {}
    if raw is not None:
        ratios["queue_over_raw_jobs_per_s"] = _ratio(q["jobs_per_s"], raw["jobs_per_s"])
        ratios["queue_over_raw_cpu_per_job"] = _ratio(q["cpu_ms_per_job"], raw["cpu_ms_per_job"])
    if direct is not None:
        ratios["queue_over_direct_cpu_per_job"] = _ratio(q["cpu_ms_per_job"], direct["cpu_ms_per_job"])
    if "queue_b" in paths:
        ratios["queue_b_over_queue_cpu_per_job"] = _ratio(paths["queue_b"]["cpu_ms_per_job"], q["cpu_ms_per_job"])
    if lite is not None:
        ratios.update(
            queue_over_litellm_jobs_per_s=_ratio(q["jobs_per_s"], lite["jobs_per_s"]),
            queue_over_litellm_cpu_per_job=_ratio(q["cpu_ms_per_job"], lite["cpu_ms_per_job"]),
            queue_rss_over_litellm=_ratio(q["peak_rss_mb"], lite["peak_rss_mb"]),
        )
    return {
        "upstream_s": latency,
        "concurrency": concurrency,
        "procs": procs,
        "jobs": args.jobs,
        "deltas_per_job": 20,
        "load_before": load0,
        "load_after": load_average(),
        "paths": paths,
        "ratios": ratios,
    }


def print_config(cfg: dict[str, Any]) -> None:
    print(
        f"\nupstream {cfg['upstream_s']:g} s, {cfg['jobs']} jobs, concurrency {cfg['concurrency']} x "
        f"{cfg['procs']} process(es), 20 deltas/job, load {cfg['load_before']} -> {cfg['load_after']}"
    )
    print(f"{'path':<10}{'ok':>6}{'jobs/s':>9}{'/core':>8}{'CPU ms/job':>12}{'CPU %':>7}{'peak RSS MB':>13}  errors")
    for name, row in cfg["paths"].items():
        print(
            f"{name:<10}{row['ok']:>6}{row['jobs_per_s']:>9}{row['jobs_per_s_per_core']:>8}"
            f"{row['cpu_ms_per_job']:>12}{row['cpu_pct_of_core']:>7}{row['peak_rss_mb']:>13}  {row['errors'] or ''}"
            + (f"  worker run p50 {row['run_s_p50']} s" if row.get("run_s_p50") is not None else "")
            + (
                f"  [simulator {row['simulator_cpu_ms_per_job']}, Redis {row['redis_cpu_ms_per_job']} ms/job;"
                f" machine {row['machine_busy_pct']} % busy]"
                if "machine_busy_pct" in row
                else ""
            )
        )
    print("  ".join(f"{k}={v}" for k, v in cfg["ratios"].items()), flush=True)


def plot(configs: list[dict[str, Any]], python: Path, out: Path) -> None:
    """Draw jobs/s per core and CPU ms/job against the configuration, with the scratch venv's matplotlib."""
    data = [
        {
            "label": f"c={c['concurrency']}" + (f" x{c['procs']}" if c["procs"] > 1 else ""),
            "paths": {n: [r["jobs_per_s_per_core"], r["cpu_ms_per_job"]] for n, r in c["paths"].items()},
        }
        for c in configs
    ]
    script = r"""
import json, sys
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
data, out = json.loads(sys.argv[1]), sys.argv[2]
labels = [d["label"] for d in data]
fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
for name in data[0]["paths"]:
    a1.plot(labels, [d["paths"][name][0] for d in data], marker="o", label=name)
    a2.plot(labels, [d["paths"][name][1] for d in data], marker="o", label=name)
a1.set_title("jobs/s per worker core (1 s upstream, 20 deltas)")
a2.set_title("CPU ms per job")
a2.set_yscale("log")
for a in (a1, a2):
    a.set_xlabel("concurrency per process x processes")
    a.grid(alpha=0.3)
    a.legend()
fig.tight_layout()
fig.savefig(out, dpi=100)
"""
    subprocess.run([str(python), "-c", script, json.dumps(data), str(out)], check=True)
    print(f"plot written to {out}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--jobs", type=int, default=1000)
    p.add_argument("--concurrency", type=int, default=200)
    p.add_argument("--latencies", default="0,1")
    p.add_argument("--procs", type=int, default=1, help="processes per path (workers for the queue path)")
    p.add_argument("--pool", default="gevent", help="the worker's pool (llmq worker --pool)")
    p.add_argument("--quick", action="store_true", help="smoke size: 150 jobs, concurrency 50")
    p.add_argument("--scaling", action="store_true", help="1 s upstream at concurrency 50, 200, 1000, and 200 x 2")
    p.add_argument("--plot", help="with --scaling: write a PNG of the curve here")
    p.add_argument("--no-litellm", action="store_true", help="skip the LiteLLM path (no scratch venv)")
    p.add_argument("--paths", default=",".join(PATHS), help="paths to run (queue always runs)")
    p.add_argument("--peer-venv", default=str(Path.home() / ".cache" / "llmqueue-bench" / "peers"))
    p.add_argument("--worker-env", action="append", default=[], metavar="KEY=VALUE", help="extra worker setting")
    p.add_argument(
        "--compare-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="run the queue path a second time (queue_b) with these worker settings, e.g. PYTHONPATH=<older tree>",
    )
    p.add_argument("--rounds", type=int, default=1, help="with --compare-env/--compare-job: A/B rounds (median)")
    p.add_argument("--job-extra", metavar="JSON", help='fields added to every queued job, e.g. \'{"tags": ["x"]}\'')
    p.add_argument(
        "--compare-job",
        metavar="JSON",
        help='run the queue path again (queue_b) with these job fields, e.g. \'{"cache": {"ttl_s": 60}}\'',
    )
    p.add_argument("--json", help="also write the whole result to this file")
    args = p.parse_args()
    if args.quick:
        args.jobs, args.concurrency = 150, 50
    python = None if args.no_litellm or "litellm" not in args.paths else peer_python(Path(args.peer_venv).expanduser())
    if args.scaling:
        plan = [(1.0, 50, 1), (1.0, 200, 1), (1.0, 1000, 1), (1.0, 200, 2)]
    else:
        plan = [(float(x), args.concurrency, args.procs) for x in args.latencies.split(",")]
    jobs = args.jobs
    configs = []
    for latency, concurrency, procs in plan:
        # enough jobs for several waves of the widest configuration
        args.jobs = max(jobs, 2 * concurrency * procs) if args.scaling else jobs
        cfg = run_config(args, latency, concurrency, procs, python)
        print_config(cfg)
        configs.append(cfg)
    if args.plot and python is not None:
        plot(configs, python, Path(args.plot))
    summary = {
        "bench": "queue_bench",
        "worker_env": args.worker_env,
        "pool": args.pool,
        "configs": {f"{c['upstream_s']:g}s_c{c['concurrency']}x{c['procs']}": c for c in configs},
    }
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, separators=(",", ":")), flush=True)


if __name__ == "__main__":
    main()

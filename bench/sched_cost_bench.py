"""What scheduling costs a job that uses it: a priority class, a weighted tenant, a concurrency key.

Instructions, not time (load-proof on a shared machine): per variant, one Redis runs under callgrind
counting only its command execution (``processCommand``: scripts included, not the event loop),
and two Python processes run under callgrind counting only the thread that does the measured work
(as ``hotpath_bench.py``: a ctypes callback toggles the collection):

* the **producer** ``Client.submit``s ``--jobs`` jobs (registration, push into the schedule);
* the **worker** takes them as a worker's channel does (``Channel.fetch_many``: the fetch script
  picks class, tenant and key), runs each through the real pipeline (``JobRunner.run``, simulator
  at 0 s, 20 deltas) and releases its slot (``Channel.release``: the release script), one job at a
  time; with ``--no-run`` it only takes and releases them (the schedule's own path, nothing else
  in Redis meanwhile: the worker's background threads write to Redis on timers, which moves a
  whole job's Redis count by a few per cent from run to run).

The producer's memory watermark is off (``LLMQ_REDIS_HIGH_WATERMARK=0``): it reads ``INFO memory``
once a second, so its instructions per submit would follow the wall time (the load), not the job.

Redis's count is zeroed after each process's warm-up and dumped after its measured jobs
(``callgrind_control`` on that Redis's pid only). Variants (``--variant``, default all):

* ``plain``: tenant ``default``, class ``normal``, no key (the baseline of the ratios);
* ``interactive``: ``priority: interactive``;
* ``tenant``: tenant ``acme``, ``weight = 3`` in the published ``[tenants]``;
* ``key``: ``concurrency_key`` one of 50 users (cap 1; one job at a time: never parked);
* ``all``: the three at once;
* ``all_parked``: the three, every job the same key, fetched two at a time: each job is parked
  behind the one running and woken when it releases (a key's contended path).

Prints per variant the instructions per job of each part and their ratios to ``plain``, then one
JSON line.

    .venv/bin/python bench/sched_cost_bench.py [--jobs 100] [--warmup 20] [--no-run] [--variant all ...]
"""

from __future__ import annotations

import argparse
import base64
import ctypes
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import redis

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from _measure import load_average  # noqa: E402

from llmq.localredis import free_port, ping  # noqa: E402

QUEUE = "llmq"
TENANTS = {"acme": {"weight": 3}}
#: name -> (job fields, fetch limit); ``{i}`` in a concurrency key is the job's number
VARIANTS: dict[str, tuple[dict[str, Any], int]] = {
    "plain": ({}, 1),
    "interactive": ({"priority": "interactive"}, 1),
    "tenant": ({"tenant": "acme"}, 1),
    "key": ({"concurrency_key": "user-{i}"}, 1),
    "all": ({"priority": "interactive", "tenant": "acme", "concurrency_key": "user-{i}"}, 1),
    "all_parked": ({"priority": "interactive", "tenant": "acme", "concurrency_key": "doc-1"}, 2),
}


def job_of(variant: str, tag: str, i: int) -> dict[str, Any]:
    fields, _ = VARIANTS[variant]
    job: dict[str, Any] = {
        "id": f"sched-{tag}-{i}",
        "model": "openai:gpt-4o-mini",
        "messages": [{"role": "user", "content": f"sched {tag} {i}"}],
        "max_tokens": 64,
    }
    for name, value in fields.items():
        job[name] = value.format(i=i % 50) if isinstance(value, str) else value
    return job


# --- callgrind plumbing ---------------------------------------------------------------------------


def callgrind_argv(out: Path, toggle: str) -> list[str]:
    return [
        "valgrind",
        "--tool=callgrind",
        f"--callgrind-out-file={out}",
        "--collect-atstart=no",
        f"--toggle-collect={toggle}",
    ]


def redis_zero(pid: int) -> None:
    """Zero the counts of exactly that callgrind (never all of the machine's: other people's run too)."""
    subprocess.run(["callgrind_control", "--zero", str(pid)], check=True, capture_output=True, timeout=120)


def redis_dump(pid: int, out: Path) -> int:
    """Dump the counts of that callgrind since its last zero; the instructions in the dump."""
    before = set(out.parent.glob(out.name + ".*"))
    subprocess.run(["callgrind_control", "--dump", str(pid)], check=True, capture_output=True, timeout=120)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        new = sorted(set(out.parent.glob(out.name + ".*")) - before)
        for path in new:
            found = re.search(r"^(?:summary|totals): (\d+)", path.read_text(), re.M)
            if found:
                return int(found.group(1))
        time.sleep(0.2)
    raise RuntimeError(f"no callgrind dump of pid {pid} appeared")


class CallgrindRedis:
    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="sched-redis-"))
        self.out = self.dir / "callgrind.out"
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        argv = [*callgrind_argv(self.out, "processCommand"), shutil.which("redis-server") or "redis-server"]
        argv += ["--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        argv += ["--dir", str(self.dir), "--maxmemory-policy", "noeviction"]
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while not ping(self.url, 0.5):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError("redis-server under callgrind did not start")
            time.sleep(0.2)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(60)
        shutil.rmtree(self.dir, ignore_errors=True)


def run_child(role: str, variant: str, args: argparse.Namespace, url: str, redis_pid: int) -> dict[str, int]:
    out = Path(tempfile.mkdtemp(prefix=f"sched-{role}-")) / "callgrind.out"
    report = out.parent / "report.json"
    argv = [*callgrind_argv(out, "_CallPythonObject"), sys.executable, str(Path(__file__).resolve())]
    argv += ["--child", role, "--variant", variant, "--jobs", str(args.jobs), "--warmup", str(args.warmup)]
    argv += ["--url", url, "--redis-pid", str(redis_pid), "--report", str(report)]
    argv += ["--no-run"] if args.no_run else []
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=3600, env=os.environ.copy())
    found = re.search(r"Collected : (\d+)", proc.stderr)
    if proc.returncode != 0 or found is None or not report.exists():
        raise RuntimeError(f"{role} of {variant} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    counts = json.loads(report.read_text())
    shutil.rmtree(out.parent, ignore_errors=True)
    return {"python": int(found.group(1)), "redis": int(counts["redis"])}


# --- the two children (each under callgrind) ------------------------------------------------------


def producer_child(args: argparse.Namespace) -> dict[str, int]:
    from producers import Client
    from producers.settings import ProducerSettings

    with Client(settings=ProducerSettings(redis_url=args.url, redis_high_watermark=0)) as client:
        for i in range(args.warmup):
            client.submit(job_of(args.variant, "warm", i))
        redis_zero(args.redis_pid)
        callback = ctypes.CFUNCTYPE(None)(
            lambda: [client.submit(job_of(args.variant, "run", i)) for i in range(args.jobs)] and None
        )
        callback()
        return {"redis": redis_dump(args.redis_pid, Path(_redis_out(args.redis_pid)))}


def _redis_out(pid: int) -> str:
    """The callgrind output file the Redis of ``pid`` writes (from its command line)."""
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    [arg] = [a for a in cmdline if a.startswith(b"--callgrind-out-file=")]
    return arg.split(b"=", 1)[1].decode()


def worker_child(args: argparse.Namespace) -> dict[str, int]:
    from hotpath_bench import PLAIN, Variant
    from kombu import Connection

    from llmq.devstack import LocalStack
    from workers.contract import CompletionJob
    from workers.runtime.broker import Channel, Transport

    limit = VARIANTS[args.variant][1]
    os.environ["LLMQ_REDIS_URL"] = args.url
    with (
        LocalStack() as stack,
        Connection(args.url, transport=Transport, transport_options={"visibility_timeout": 3600}) as conn,
    ):
        stack.start_redis()
        stack.start_simulator()
        runner = None if args.no_run else Variant(PLAIN, stack, args.url).runner
        channel = conn.channel()
        assert isinstance(channel, Channel)

        def take(jobs: int) -> None:
            done = 0
            while done < jobs:
                taken, unreadable = channel.fetch_many([QUEUE], limit)
                assert unreadable is None and taken, "the schedule gave nothing"
                channel._fetched.clear()
                for fetched in taken:
                    message = json.loads(fetched.payload)
                    args_, _kwargs, _embed = json.loads(base64.b64decode(message["body"]))
                    job = CompletionJob.model_validate(args_[0])
                    if runner is not None:
                        result = runner.run(job).result
                        assert result is not None and result.status == "succeeded", result
                    channel.release([fetched.tag])
                    done += 1

        take(args.warmup)
        redis_zero(args.redis_pid)
        callback = ctypes.CFUNCTYPE(None)(lambda: take(args.jobs))
        callback()
        counts = {"redis": redis_dump(args.redis_pid, Path(_redis_out(args.redis_pid)))}
        if runner is not None:
            runner.res.close()
        return counts


# --- orchestration --------------------------------------------------------------------------------


def measure(variant: str, args: argparse.Namespace) -> dict[str, int]:
    from workers.connections.schedule import conf_fields, publish_conf

    server = CallgrindRedis()
    try:
        client = redis.Redis.from_url(server.url)
        fields = conf_fields(weights={}, key_concurrency=1, keys={}, retry_after_s=2.0, tenants=TENANTS)
        publish_conf(client, fields)
        client.close()
        producer = run_child("producer", variant, args, server.url, server.proc.pid)
        worker = run_child("worker", variant, args, server.url, server.proc.pid)
    finally:
        server.stop()
    return {
        "producer_python": producer["python"],
        "producer_redis": producer["redis"],
        "worker_python": worker["python"],
        "worker_redis": worker["redis"],
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--variant", action="append", choices=sorted(VARIANTS), help="default: all")
    p.add_argument("--jobs", type=int, default=100)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--no-run", action="store_true", help="the worker takes and releases jobs without running them")
    p.add_argument("--child", choices=("producer", "worker"), help=argparse.SUPPRESS)
    p.add_argument("--url", help=argparse.SUPPRESS)
    p.add_argument("--redis-pid", type=int, help=argparse.SUPPRESS)
    p.add_argument("--report", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        [args.variant] = args.variant
        counts = producer_child(args) if args.child == "producer" else worker_child(args)
        Path(args.report).write_text(json.dumps(counts))
        return 0
    names = ["plain", *[v for v in (args.variant or VARIANTS) if v != "plain"]]
    load = [load_average()]
    per_job: dict[str, dict[str, float]] = {}
    for name in names:
        counts = measure(name, args)
        row = {part: n / args.jobs for part, n in counts.items()}
        row["total"] = sum(row.values())
        per_job[name] = row
        print(f"{name:<12} " + " ".join(f"{k}={v / 1e6:.4f}M" for k, v in row.items()), flush=True)
    load.append(load_average())
    base = per_job["plain"]
    result: dict[str, Any] = {}
    for name, row in per_job.items():
        result[name] = {
            "instructions_per_job": {k: round(v) for k, v in row.items()},
            "over_plain": {k: round(v / base[k], 4) for k, v in row.items()},
            "extra_per_job": {k: round(v - base[k]) for k, v in row.items()},
        }
    summary = {"bench": "sched_cost_bench", "jobs": args.jobs, "run": not args.no_run, "load": load, "variants": result}
    print(json.dumps(summary, separators=(",", ":")), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

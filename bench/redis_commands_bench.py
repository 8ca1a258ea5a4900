"""Redis commands per queued job, counted with MONITOR, for two worker settings side by side (A/B).

One Redis, one simulator, one ``celery worker -P gevent`` (started as ``queue_bench.py`` starts them).
For each variant (A: the worker as configured; B: with ``--compare-env`` settings), alternating
``--rounds`` times on fresh workers: a warm-up, then ``--jobs`` jobs through the queue path while a
MONITOR connection counts every command a client sent (commands run inside Lua scripts, MONITOR's
``client_type`` ``lua``, are left out: a script call is one round trip), of all clients together
(producer, reply listener, worker), and of the worker's connections alone (``worker_by_command``:
the clients whose port a worker process holds when the jobs are done); an ``EVALSHA`` is named by
its script (``by_script``, ``worker_by_script``: the module constant or ``lua/`` file whose SHA-1 it
calls). Also the worker's CPU over the same jobs, but MONITOR slows Redis: take CPU from
``queue_bench.py --compare-env`` instead. Prints, per variant, commands per job by name and the
publishes to Celery's event exchange, then one JSON line.

``--backlog`` queues the jobs while the worker is stopped (SIGSTOP) and then lets it run them: every
slot that frees finds work left, whatever the producer's pace (without it, a worker faster than the
producer takes each job as it is queued: a wait on the bells and a fetch per arrival).

``--rate R`` submits the jobs at a steady R per second instead of all at once: each arrives at a
worker that is idle, waiting on the bells (the wake-up's path). ``--sends`` also counts the worker's
socket writes (``strace`` attached to the worker processes for the measured jobs, as root or with
ptrace allowed): ``worker_redis_sends_per_job``, the writes that carry Redis commands (one write may
carry several: a pipeline, a wait and the fetch behind it), and ``worker_sends_per_job``, all of its
write system calls (HTTP to the simulator, pipes, files too). strace slows the worker: compare A with B.

    .venv/bin/python bench/redis_commands_bench.py --compare-env LLMQ_TASK_EVENTS_FLUSH_MS=0
    cd /tmp && $REPO/.venv/bin/python $REPO/bench/redis_commands_bench.py --backlog --compare-env PYTHONPATH=/tmp/older
    cd /tmp && $REPO/.venv/bin/python $REPO/bench/redis_commands_bench.py --rate 10 --sends --compare-env PYTHONPATH=/tmp/older
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
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

STOP = "llmq-bench-monitor-stop"


def script_names(root: Path = HERE.parent) -> dict[str, str]:
    """SHA-1 -> name of every Lua script the code registers: module-level string constants that call
    Redis (``module.NAME``), and the ``lua/`` files with the shared library their loader prepends."""
    names: dict[str, str] = {}
    for package in ("workers", "producers", "llmq"):
        for path in sorted((root / package).rglob("*.py")):
            tree = ast.parse(path.read_text())
            for node in tree.body:
                if not (isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant)):
                    continue
                value = node.value.value
                if isinstance(value, str) and "redis.call" in value:
                    for target in node.targets:
                        if isinstance(target, ast.Name):
                            names[hashlib.sha1(value.encode()).hexdigest()] = f"{path.stem}.{target.id}"
    libraries = {
        "workers/connections/lua": "sched_lib.lua",
        "workers/accounting/lua": "_lib.lua",
        "workers/jobs/lua": None,
    }
    for folder, library in libraries.items():
        prefix = (root / folder / library).read_text() + "\n" if library else ""
        for path in sorted((root / folder).glob("*.lua")):
            source = prefix + path.read_text()
            names[hashlib.sha1(source.encode()).hexdigest()] = f"{path.parent.parent.name}/{path.stem}.lua"
    return names


class Monitor:
    """Counts the commands clients send (not those of Lua scripts) until stopped."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.commands: Counter[str] = Counter()
        #: (client port, command name or ``EVALSHA:<script>``) -> count
        self.by_client: Counter[tuple[str, str]] = Counter()
        self.scripts = script_names()
        self.event_publishes = 0
        self.event_messages: Counter[str] = Counter()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        client = redis.Redis.from_url(self.url)
        with client.monitor() as m:
            self._ready.set()
            for entry in m.listen():
                command: str = entry["command"]
                if STOP in command:
                    break
                if entry.get("client_type") == "lua":
                    continue
                name = command.split(" ", 1)[0].upper()
                self.commands[name] += 1
                if name == "EVALSHA":
                    sha = command.split(" ", 2)[1]
                    name = f"EVALSHA:{self.scripts.get(sha, sha[:8])}"
                self.by_client[(entry.get("client_port", ""), name)] += 1
                if name == "PUBLISH" and ".celeryev/" in command:
                    self.event_publishes += 1
                    self.event_messages[command.split(" ", 2)[1].rsplit("/", 1)[-1]] += 1
        client.close()

    def __enter__(self) -> Monitor:
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        client = redis.Redis.from_url(self.url)
        client.echo(STOP)
        client.close()
        self._thread.join(30)


#: A traced write that carries Redis commands: its data starts with a RESP array (``*<n>``).
_REDIS_WRITE = re.compile(
    r'^\d+\s+(?:sendto|write|sendmsg|writev)\(\d+, (?:\{msg_name=[^\[]*)?\[?(?:\{iov_base=)?"\*\d'
)
_ANY_WRITE = re.compile(r"^\d+\s+(?:sendto|write|sendmsg|writev)\(")


class SendCounter:
    """The worker processes' write system calls while open, traced with ``strace -f -p``."""

    def __init__(self, workers: list[Any]) -> None:
        self.pids = sorted(
            {p.pid for w in workers for p in [psutil.Process(w.pid), *psutil.Process(w.pid).children(True)]}
        )
        self._out = tempfile.NamedTemporaryFile(prefix="llmq-sends-", suffix=".strace", delete=False)  # noqa: SIM115
        self._proc: subprocess.Popen[bytes] | None = None
        self.redis_sends = self.sends = 0

    def __enter__(self) -> SendCounter:
        argv = ["strace", "-f", "-qq", "-e", "signal=none", "-e", "trace=sendto,sendmsg,write,writev", "-s", "4"]
        argv += ["-o", self._out.name, *(arg for pid in self.pids for arg in ("-p", str(pid)))]
        self._proc = subprocess.Popen(argv, stderr=subprocess.PIPE)
        time.sleep(1.0)  # attached (strace has no "ready" signal; the warm-up is over, nothing runs)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._proc is not None
        self._proc.send_signal(signal.SIGINT)  # detaches, the workers go on
        self._proc.wait(30)
        for line in Path(self._out.name).read_text(errors="replace").splitlines():
            if _ANY_WRITE.match(line):
                self.sends += 1
                self.redis_sends += bool(_REDIS_WRITE.match(line))
        os.unlink(self._out.name)


def measure(stack: LocalStack, args: argparse.Namespace, env: dict[str, str], name: str) -> dict[str, Any]:
    workers = _start_workers(stack, args, args.concurrency, 1, env, name)
    counter: SendCounter | None = None
    try:
        run_queue(stack, 50, workers)  # warm-up: imports, pools, connections
        with contextlib.ExitStack() as stack_:
            if args.sends:
                counter = stack_.enter_context(SendCounter(workers))
            with Monitor(stack.redis_url) as monitor:
                if args.backlog:
                    r = run_backlog(stack, args.jobs, workers)
                elif args.rate:
                    r = run_paced(stack, args.jobs, workers, args.rate)
                else:
                    r = run_queue(stack, args.jobs, workers)
                ports = _ports(workers)
    finally:
        _stop_workers(workers)
    jobs = max(1, r["ok"])
    by_script: Counter[str] = Counter()
    worker: Counter[str] = Counter()
    for (port, name), n in monitor.by_client.items():
        if name.startswith("EVALSHA:"):
            by_script[name[8:]] += n
        if port in ports:
            worker[name] += n
    sends = {}
    if counter is not None:
        sends = {
            "worker_redis_sends_per_job": round(counter.redis_sends / jobs, 2),
            "worker_sends_per_job": round(counter.sends / jobs, 2),
        }
    return {
        "ok": r["ok"],
        **sends,
        "commands_per_job": round(sum(monitor.commands.values()) / jobs, 2),
        "event_publishes_per_job": round(monitor.event_publishes / jobs, 3),
        "event_messages": dict(monitor.event_messages),
        "by_command": {k: round(v / jobs, 2) for k, v in monitor.commands.most_common()},
        "by_script": {k: round(v / jobs, 2) for k, v in by_script.most_common()},
        "worker_commands_per_job": round(sum(worker.values()) / jobs, 2),
        "worker_by_command": {k: round(v / jobs, 2) for k, v in worker.most_common()},
        "cpu_ms_per_job_with_monitor": round(1000 * r["cpu_s"] / jobs, 2),
    }


def run_backlog(stack: LocalStack, jobs: int, workers: list[Any]) -> dict[str, Any]:
    """``jobs`` queue-bench jobs queued while the workers are stopped (SIGSTOP), then run: every slot
    that frees finds work left (the refill of a busy worker), whatever the producer's pace."""
    nonce = time.time_ns()
    reply = f"llmq:reply:backlog-{nonce}"
    client = Client(stack.redis_url)
    listener = redis.Redis.from_url(stack.redis_url)
    procs = [psutil.Process(w.pid) for w in workers]
    for proc in procs:
        proc.send_signal(signal.SIGSTOP)
    try:
        for i in range(jobs):
            job = {"model": "openai:gpt-4o-mini", "messages": [{"role": "user", "content": f"backlog {nonce} {i}"}]}
            client.submit({**job, "max_tokens": 64, "reply_to": reply})
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGCONT)
    cpu0 = sum(p.cpu_times().user + p.cpu_times().system for p in procs)
    ok = 0
    for _ in range(jobs):
        item = listener.blpop([reply], timeout=120)
        if item is None:
            break
        ok += b'"status":"succeeded"' in item[1]
    cpu = sum(p.cpu_times().user + p.cpu_times().system for p in procs) - cpu0
    client.close()
    listener.close()
    return {"ok": ok, "cpu_s": cpu}


def run_paced(stack: LocalStack, jobs: int, workers: list[Any], rate: float) -> dict[str, Any]:
    """``jobs`` queue-bench jobs submitted at a steady ``rate`` per second (each on its own schedule
    from the first: a late submit does not shift the rest), their results collected meanwhile."""
    nonce = time.time_ns()
    reply = f"llmq:reply:paced-{nonce}"
    client = Client(stack.redis_url)
    procs = [psutil.Process(w.pid) for w in workers]
    cpu0 = sum(p.cpu_times().user + p.cpu_times().system for p in procs)
    results: list[Any] = []

    def collect() -> None:
        listener = redis.Redis.from_url(stack.redis_url)
        while len(results) < jobs:
            item = listener.blpop([reply], timeout=120)
            if item is None:
                break
            results.append(item[1])
        listener.close()

    collector = threading.Thread(target=collect, daemon=True)
    collector.start()
    t0 = time.monotonic()
    for i in range(jobs):
        time.sleep(max(0.0, t0 + i / rate - time.monotonic()))
        job = {"model": "openai:gpt-4o-mini", "messages": [{"role": "user", "content": f"paced {nonce} {i}"}]}
        client.submit({**job, "max_tokens": 64, "reply_to": reply})
    collector.join(300)
    cpu = sum(p.cpu_times().user + p.cpu_times().system for p in procs) - cpu0
    client.close()
    ok = sum(b'"status":"succeeded"' in item for item in results)
    return {"ok": ok, "cpu_s": cpu}


def _ports(workers: list[Any]) -> set[str]:
    """The local ports of the worker processes' TCP connections (their Redis clients, pooled)."""
    ports: set[str] = set()
    for w in workers:
        for proc in [psutil.Process(w.pid), *psutil.Process(w.pid).children(recursive=True)]:
            for conn in proc.net_connections(kind="tcp"):
                if conn.laddr:
                    ports.add(str(conn.laddr.port))
    return ports


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--jobs", type=int, default=200)
    p.add_argument("--concurrency", type=int, default=50)
    p.add_argument("--latency", type=float, default=0.0, help="upstream seconds per answer (20 deltas)")
    p.add_argument("--pool", default="gevent")
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument(
        "--backlog", action="store_true", help="queue all jobs while the worker is stopped, then run them (refills)"
    )
    p.add_argument("--rate", type=float, default=0.0, help="submit the jobs at this many per second (paced)")
    p.add_argument("--sends", action="store_true", help="also count the worker's socket writes (strace)")
    p.add_argument("--compare-env", action="append", default=[], metavar="KEY=VALUE", required=True)
    args = p.parse_args()
    other = dict(kv.split("=", 1) for kv in args.compare_env)
    runs: dict[str, list[dict[str, Any]]] = {"a": [], "b": []}
    with LocalStack(env={k: v for k, v in os.environ.items() if k != "LLMQ_REDIS_URL"}) as stack:
        stack.start_redis()
        stack.start_simulator(tokens_per_s=20.0 / args.latency if args.latency else 0.0)
        for k in range(args.rounds):
            for variant, env in (("a", {}), ("b", other)):
                row = measure(stack, args, env, f"cmd{variant}{k}")
                runs[variant].append(row)
                print(variant, json.dumps(row), flush=True)
    summary = {
        "bench": "redis_commands_bench",
        "b_env": args.compare_env,
        "jobs": args.jobs,
        "concurrency": args.concurrency,
        "upstream_s": args.latency,
        "backlog": args.backlog,
        "rate": args.rate,
        "commands_per_job": {v: [r["commands_per_job"] for r in rows] for v, rows in runs.items()},
        "worker_commands_per_job": {v: [r["worker_commands_per_job"] for r in rows] for v, rows in runs.items()},
        "event_publishes_per_job": {v: [r["event_publishes_per_job"] for r in rows] for v, rows in runs.items()},
    }
    if args.sends:
        for key in ("worker_redis_sends_per_job", "worker_sends_per_job"):
            summary[key] = {v: [r[key] for r in rows] for v, rows in runs.items()}
    print(json.dumps(summary, separators=(",", ":")), flush=True)


if __name__ == "__main__":
    main()

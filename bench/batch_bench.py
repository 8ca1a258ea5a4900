"""``llmq batch`` vs the same jobs submitted straight through ``Client``, same stack, same run.

Starts Redis, the simulator (small latency) and gevent worker subprocesses, writes a mixed-format
input file (OpenAI Batch, Anthropic and plain lines), then per round:

* ``client`` — the same jobs (already parsed, not timed) submitted in a loop through
  :class:`producers.Client` with one reply list, results BLPOPed; wall time first submit -> last result;
* ``batch``  — ``llmq batch IN -o OUT`` as a subprocess (rounds alternate which goes first); wall time from spawn to exit (so process
  start, the validation pass and writing the output are all inside), peak RSS from the kernel's
  high-water mark (``VmHWM``, read every 20 ms until exit) cross-checked by sampling RSS with psutil.

It prints both throughputs, their ratio (target >= 0.90) and the peak RSS (target <= 150 MB).

    .venv/bin/python bench/batch_bench.py [--lines 10000] [--workers 2] [--concurrency 100]
        [--latency 0.05] [--window 512] [--rounds 1] [--flat-lines 1000000]

``--via-compare``: the same file through ``llmq batch --via provider`` (provider batches: OpenAI Batch
and Anthropic Message Batches at the simulator, whose processing time is ``--processing-s``) and
``--via queue`` (every line a live call), rounds alternating which goes first, one worker whose own
batcher thread sends the batches. Per mode: the ledger's spend, the worker process's CPU per line
(provider: the batcher taking the handed-over lines, sending and polling the batches and ending the
lines in bulk, plus anything else the worker did meanwhile; queue: the runs of the live calls), and
the wall time from ``llmq batch``'s start to its last result. Prints one JSON line, medians over the
rounds:

* ``cost_ratio_provider_over_live``: the ledger's spend, provider / queue (median of the per-round ratios);
* ``worker_cpu_ms_per_line``: ``{"provider": ms, "queue": ms}``, the worker process's CPU (user +
  system, ``/proc``) per line; ``cpu_ratio_provider_over_live``: their ratio (target: a small fraction);
* ``submit_to_last_result_s``: ``{"provider": s, "queue": s}``, ``llmq batch``'s wall time;
* ``usd_per_1k_lines``: the spend per 1,000 lines in each mode;
* ``lines``, ``rounds``, ``processing_s``, ``latency_s``, ``concurrency``: the run's shape;
  ``medians_over_rounds``: true; ``load``: the machine's 1/5/15-minute load at the end; ``cpus``.

    .venv/bin/python bench/batch_bench.py --via-compare [--lines 2000] [--rounds 3] [--processing-s 10]
        [--concurrency 100] [--latency 0.05]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from _measure import load_average, proc_cpu_s  # noqa: E402

from llmq.devstack import LocalStack  # noqa: E402
from producers.batch.files import iter_lines  # noqa: E402
from producers.batch.formats import parse_line  # noqa: E402
from producers.client import Client  # noqa: E402


def write_input(path: Path, lines: int) -> None:
    with open(path, "w") as f:
        for i in range(lines):
            prompt = f"summarise item {i} of the nightly evaluation set in one sentence"
            if i % 3 == 0:
                body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": prompt}], "max_tokens": 64}
                line = {"custom_id": f"req-{i}", "method": "POST", "url": "/v1/chat/completions", "body": body}
            elif i % 3 == 1:
                params = {
                    "model": "claude-3-5-haiku",
                    "max_tokens": 64,
                    "messages": [{"role": "user", "content": prompt}],
                }
                line = {"custom_id": f"req-{i}", "params": params}
            else:
                line = {"custom_id": f"req-{i}", "prompt": prompt, "system": "be brief"}
            f.write(json.dumps(line) + "\n")


def run_client(stack: LocalStack, source: Path) -> dict[str, float]:
    """The baseline: the same jobs, built before the clock starts, through the client."""
    reply = f"llmq:reply:bench-{uuid.uuid4().hex[:8]}"
    jobs = []
    for number, raw in iter_lines(source):
        job = parse_line(raw, number, default_model="openai:gpt-4o-mini").job
        job.id = f"bench-{uuid.uuid4().hex}"
        job.reply_to = reply
        job.stream = False
        jobs.append(job)
    with Client(stack.redis_url) as client:
        started = time.perf_counter()
        for job in jobs:
            client.submit(job)
        submitted = time.perf_counter()
        got = 0
        while got < len(jobs):
            item = client.redis.blpop([reply], timeout=120)
            if item is None:
                raise RuntimeError(f"client baseline: only {got}/{len(jobs)} results")
            got += 1 + len(client.redis.lpop(reply, 1000) or [])
        wall = time.perf_counter() - started
    return {"wall_s": wall, "submit_s": submitted - started, "rate": len(jobs) / wall}


def _vm_hwm(pid: int) -> int:
    """The kernel's RSS high-water mark of ``pid`` since its exec (bytes). Unlike the child's
    ``ru_maxrss``, it does not count the pages of the forked bench process before the exec."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def run_batch(stack: LocalStack, source: Path, out: Path, window: int) -> dict[str, float]:
    argv = [sys.executable, "-m", "llmq.cli", "batch", str(source), "-o", str(out), "-q"]
    argv += ["--model", "openai:gpt-4o-mini", "--window", str(window)]
    peak_sampled = high_water = 0
    stop = threading.Event()
    started = time.perf_counter()
    proc = subprocess.Popen(argv, env=stack.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def sample() -> None:
        nonlocal peak_sampled, high_water
        try:
            ps = psutil.Process(proc.pid)
            while not stop.is_set():
                peak_sampled = max(peak_sampled, ps.memory_info().rss)
                high_water = max(high_water, _vm_hwm(proc.pid))
                stop.wait(0.02)
        except (psutil.Error, OSError):
            pass

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    assert proc.stderr is not None
    stderr = proc.stderr.read()
    _, status = os.waitpid(proc.pid, 0)
    wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    stop.set()
    sampler.join()
    if proc.returncode != 0:
        raise RuntimeError(f"llmq batch exited {proc.returncode}: {stderr.decode()[-2000:]}")
    lines = out.read_bytes().count(b"\n")
    return {
        "wall_s": wall,
        "rate": lines / wall,
        "peak_rss_mb": high_water / 2**20,
        "sampled_mb": peak_sampled / 2**20,
    }


_VALIDATE = """
import sys
from producers.batch import validate_file
report = validate_file(sys.argv[1], model="openai:gpt-4o-mini")
assert report.valid == int(sys.argv[2]), report.issues[:3]
print(next(line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM:")))
"""


def flat_check(work: Path, lines: int) -> float:
    """Peak RSS (MB) of a process that validates a file of ``lines`` lines (the one pass whose
    state grows with the file: the custom_id set); the run pass is bounded by the window."""
    path = work / f"flat-{lines}.jsonl"
    write_input(path, lines)
    argv = [sys.executable, "-c", _VALIDATE, str(path), str(lines)]
    done = subprocess.run(argv, cwd=HERE.parent, capture_output=True, text=True)
    path.unlink()
    if done.returncode != 0:
        raise RuntimeError(f"validation of {lines} lines failed: {done.stderr[-2000:]}")
    return int(done.stdout.strip()) / 1024  # VmHWM is in KiB


VIA_CONFIG = """
[batch]
max_age_s = {max_age_s}
max_lines = 50000
poll_s = {poll_s}
"""


def write_via_input(path: Path, lines: int) -> None:
    """Half OpenAI Batch lines (gpt-4o), half Anthropic entries (claude-sonnet-4-5): priced models whose
    per-line costs are far above the ledger's micro-dollar rounding, so the ratio is the prices'."""
    with open(path, "w") as f:
        for i in range(lines):
            prompt = f"summarise item {i} of the nightly evaluation set in one sentence"
            messages = [{"role": "user", "content": prompt}]
            if i % 2 == 0:
                body = {"model": "gpt-4o", "messages": messages, "max_tokens": 64}
                line = {"custom_id": f"req-{i}", "method": "POST", "url": "/v1/chat/completions", "body": body}
            else:
                line = {
                    "custom_id": f"req-{i}",
                    "params": {"model": "claude-sonnet-4-5", "max_tokens": 64, "messages": messages},
                }
            f.write(json.dumps(line) + "\n")


def _spent_usd(redis_url: str) -> float:
    import redis

    from workers.accounting.ledger import GLOBAL_SCOPE, Ledger

    client = redis.Redis.from_url(redis_url)
    try:
        return next(s for s in Ledger(client).show().scopes if s.scope == GLOBAL_SCOPE).spent_usd
    finally:
        client.close()


def run_via(stack: LocalStack, worker_pid: int, source: Path, out: Path, via: str, lines: int) -> dict[str, float]:
    argv = [sys.executable, "-m", "llmq.cli", "batch", str(source), "-o", str(out), "-q", "--via", via]
    spent, cpu = _spent_usd(stack.redis_url), proc_cpu_s(worker_pid)
    started = time.perf_counter()
    done = subprocess.run(argv, env=stack.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"llmq batch --via {via} exited {done.returncode}: {done.stderr.decode()[-2000:]}")
    written = out.read_bytes().count(b"\n")
    if written != lines:
        raise RuntimeError(f"--via {via}: {written} output lines for {lines} input lines")
    time.sleep(1.0)  # the worker's last acks and events leave (its CPU for this run)
    return {
        "usd": _spent_usd(stack.redis_url) - spent,
        "cpu_ms_per_line": (proc_cpu_s(worker_pid) - cpu) * 1000 / lines,
        "wall_s": wall,
    }


def via_compare(args: argparse.Namespace) -> int:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMQ_")}
    work = Path(tempfile.mkdtemp(prefix="llmq-via-bench-"))
    (work / "logs").mkdir()
    config = work / "llmq.toml"
    config.write_text(VIA_CONFIG.format(max_age_s=args.max_age_s, poll_s=args.poll_s))
    env["LLMQ_CONFIG"] = str(config)
    source = work / "in.jsonl"
    write_via_input(source, args.lines)
    runs: dict[str, list[dict[str, float]]] = {"provider": [], "queue": []}
    with LocalStack(env=env, log_dir=str(work / "logs")) as stack:
        stack.start_redis()
        stack.start_simulator(latency=args.latency)
        import httpx2

        httpx2.post(f"{stack.simulator_url}/_sim/config", json={"batch_processing_s": args.processing_s})
        worker = stack.start_worker(pool="gevent", concurrency=args.concurrency)
        stack.wait_for_workers(1)
        for round_no in range(1, args.rounds + 1):
            order = ("provider", "queue") if round_no % 2 else ("queue", "provider")
            for via in order:
                run = run_via(stack, worker.pid, source, work / f"out-{via}-{round_no}.jsonl", via, args.lines)
                runs[via].append(run)
                print(
                    f"round {round_no} --via {via}: {json.dumps({k: round(v, 4) for k, v in run.items()})}",
                    file=sys.stderr,
                )

    def median(via: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[via])

    cost = statistics.median(p["usd"] / q["usd"] for p, q in zip(runs["provider"], runs["queue"], strict=True))
    cpu = {via: round(median(via, "cpu_ms_per_line"), 3) for via in runs}
    wall = {via: round(median(via, "wall_s"), 2) for via in runs}
    print(
        json.dumps(
            {
                "bench": "batch_via",
                "lines": args.lines,
                "rounds": args.rounds,
                "processing_s": args.processing_s,
                "latency_s": args.latency,
                "concurrency": args.concurrency,
                "cost_ratio_provider_over_live": round(cost, 4),
                "worker_cpu_ms_per_line": cpu,
                "cpu_ratio_provider_over_live": round(cpu["provider"] / cpu["queue"], 3),
                "submit_to_last_result_s": wall,
                "usd_per_1k_lines": {via: round(median(via, "usd") * 1000 / args.lines, 4) for via in runs},
                "medians_over_rounds": True,
                "load": load_average(),
                "cpus": os.cpu_count(),
            }
        )
    )
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lines", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--latency", type=float, default=0.05)
    parser.add_argument("--window", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--flat-lines", type=int, default=0, help="also validate a file this long and compare RSS")
    parser.add_argument("--via-compare", action="store_true", help="provider batches vs live calls (one JSON line)")
    parser.add_argument("--processing-s", type=float, default=10.0, help="--via-compare: the simulator's batch time")
    parser.add_argument("--max-age-s", type=float, default=1.0, help="--via-compare: [batch] max_age_s")
    parser.add_argument("--poll-s", type=float, default=1.0, help="--via-compare: [batch] poll_s")
    args = parser.parse_args()
    if args.via_compare:
        if "--lines" not in sys.argv:
            args.lines = 2000
        if "--rounds" not in sys.argv:
            args.rounds = 3
        return via_compare(args)

    env = {k: v for k, v in os.environ.items() if k != "LLMQ_REDIS_URL"}
    work = Path(tempfile.mkdtemp(prefix="llmq-batch-bench-"))
    source = work / "in.jsonl"
    (work / "logs").mkdir()
    write_input(source, args.lines)
    print(f"{args.lines} lines ({source.stat().st_size / 2**20:.1f} MiB), {args.workers} gevent worker(s) x "
          f"{args.concurrency}, simulator latency {args.latency}s, window {args.window}, cpus {os.cpu_count()}")  # fmt: skip
    ratios: list[float] = []
    with LocalStack(env=env, log_dir=str(work / "logs")) as stack:
        stack.start_redis()
        stack.start_simulator(latency=args.latency)
        for _ in range(args.workers):
            stack.start_worker(pool="gevent", concurrency=args.concurrency)
        stack.wait_for_workers(args.workers)
        for round_no in range(1, args.rounds + 1):
            # alternate the order, so drift in the machine's load does not favour one side
            out = work / f"out-{round_no}.jsonl"
            if round_no % 2:
                base = run_client(stack, source)
                batch = run_batch(stack, source, out, args.window)
            else:
                batch = run_batch(stack, source, out, args.window)
                base = run_client(stack, source)
            ratio = batch["rate"] / base["rate"]
            ratios.append(ratio)
            print(
                f"round {round_no}: client {base['rate']:.1f} jobs/s ({base['wall_s']:.1f}s, submit loop "
                f"{base['submit_s']:.1f}s) | batch {batch['rate']:.1f} lines/s ({batch['wall_s']:.1f}s) | "
                f"ratio {ratio:.3f} | batch peak RSS {batch['peak_rss_mb']:.1f} MB "
                f"(sampled {batch['sampled_mb']:.1f} MB)"
            )
    print(f"throughput ratio batch/client: median {statistics.median(ratios):.3f} (target >= 0.90)")
    if args.flat_lines:
        small, large = flat_check(work, 100), flat_check(work, args.flat_lines)
        print(f"validation pass peak RSS: 100 lines {small:.1f} MB, {args.flat_lines} lines {large:.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())

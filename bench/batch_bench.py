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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lines", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--latency", type=float, default=0.05)
    parser.add_argument("--window", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--flat-lines", type=int, default=0, help="also validate a file this long and compare RSS")
    args = parser.parse_args()

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

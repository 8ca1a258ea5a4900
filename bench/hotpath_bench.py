"""A job's own worker cost, A/B by variant, in one process: CPU time, or instructions (load-proof).

The queue bench measures a whole worker (Celery, gevent, 200 slots) and on a shared 2-core machine
its CPU per job swings ±15 % from run to run, more than the few per cent a feature's cost is. This
runs jobs one at a time through the real pipeline (``JobRunner.run``: claim, chain, metering,
ledger, events, terminal write, history) in this process against a real Redis and simulator (0 s
upstream, 20 deltas; both subprocesses, not counted), so a variant's cost is its code alone:

* ``--measure cpu`` (default): variants interleaved in blocks of ``--jobs`` for ``--rounds`` rounds;
  per variant the median of the blocks' process CPU per job;
* ``--measure instructions``: each variant's jobs run under callgrind (valgrind), counting only
  this thread's instructions while the jobs run (``--toggle-collect`` on a ctypes callback holding
  them): the same code path gives the same count however loaded the machine is (background
  threads, e.g. the shared event flusher, are left out: they do the same for every variant here).

A variant is ``name:JOB-JSON:SETTING=VALUE,...``, e.g. the cache's miss (every job a new request)
``'cache_miss:{"cache":{"ttl_s":60}}'`` or the history index off ``'no_history::history_days=0'``;
the first variant (default ``plain``: the queue bench's job) is the baseline of the ratios. Prints
one JSON line.

    .venv/bin/python bench/hotpath_bench.py --variant 'cache_miss:{"cache":{"ttl_s":60}}' --rounds 5
    .venv/bin/python bench/hotpath_bench.py --measure instructions --jobs 100 \\
        --variant 'cache_miss:{"cache":{"ttl_s":60}}' --variant 'no_history::history_days=0'
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from llmq.devstack import LocalStack  # noqa: E402
from workers.contract import CompletionJob  # noqa: E402
from workers.jobs.pipeline import JobRunner  # noqa: E402
from workers.runtime.resources import WorkerResources  # noqa: E402
from workers.settings import Settings  # noqa: E402

PLAIN = "plain::"


def parse_variant(text: str) -> tuple[str, dict[str, Any], dict[str, str]]:
    name, _, rest = text.partition(":")
    # the JSON may hold colons: the settings part is after the last ':' that follows the JSON
    job_json, settings = rest, ""
    if rest.rstrip().endswith("}") or not rest:
        job_json = rest
    else:
        job_json, _, settings = rest.rpartition(":")
    extra = json.loads(job_json) if job_json.strip() else {}
    kv = dict(item.split("=", 1) for item in settings.split(",") if item.strip())
    return name, extra, kv


class Variant:
    def __init__(self, text: str, stack: LocalStack, url: str) -> None:
        self.name, self.extra, overrides = parse_variant(text)
        settings = Settings(redis_url=url, pool="threads", concurrency=4, **overrides)  # type: ignore[arg-type]
        self.resources = WorkerResources.build(settings, watch_cancels=False, provider_env=stack.provider_env())
        self.runner = JobRunner(self.resources)

    def run(self, jobs: int) -> None:
        nonce = time.time_ns()
        for i in range(jobs):
            job = CompletionJob.model_validate(
                {
                    "id": f"hot-{uuid.uuid4().hex}",
                    "model": "openai:gpt-4o-mini",
                    "messages": [{"role": "user", "content": f"hotpath {nonce} {i}"}],
                    "max_tokens": 64,
                    **self.extra,
                }
            )
            result = self.runner.run(job).result
            assert result is not None and result.status == "succeeded", result

    def close(self) -> None:
        self.resources.close()


def measure_cpu(args: argparse.Namespace, stack: LocalStack, url: str) -> dict[str, Any]:
    variants = [Variant(v, stack, url) for v in args.variant]
    try:
        for v in variants:
            v.run(args.warmup)
        blocks: dict[str, list[float]] = {v.name: [] for v in variants}
        for k in range(args.rounds):
            for v in variants if k % 2 == 0 else list(reversed(variants)):  # alternate who goes first
                t0 = time.process_time()
                v.run(args.jobs)
                blocks[v.name].append((time.process_time() - t0) / args.jobs * 1000)
    finally:
        for v in variants:
            v.close()
    base = statistics.median(blocks[variants[0].name])
    return {
        v.name: {
            "cpu_ms_per_job": round(statistics.median(blocks[v.name]), 4),
            "cpu_ms_per_job_blocks": [round(x, 4) for x in blocks[v.name]],
            "over_baseline": round(statistics.median(blocks[v.name]) / base, 4),
        }
        for v in variants
    }


def run_one_under_callgrind(args: argparse.Namespace, stack: LocalStack, url: str) -> None:
    """This process runs under valgrind: warm up, then the measured jobs inside a ctypes callback."""
    [text] = args.variant
    v = Variant(text, stack, url)
    try:
        v.run(args.warmup)
        callback = ctypes.CFUNCTYPE(None)(lambda: v.run(args.jobs))
        callback()  # callgrind collects inside _CallPythonObject only: these jobs, this thread
    finally:
        v.close()


def measure_instructions(args: argparse.Namespace) -> dict[str, Any]:
    counts: dict[str, int] = {}
    for text in args.variant:
        name = parse_variant(text)[0]
        out = Path(tempfile.mkdtemp(prefix="hotpath-cg-")) / "callgrind.out"
        argv = [
            "valgrind",
            "--tool=callgrind",
            f"--callgrind-out-file={out}",
            "--collect-atstart=no",
            "--toggle-collect=_CallPythonObject",
            sys.executable,
            str(Path(__file__).resolve()),
            "--under-callgrind",
            "--jobs",
            str(args.jobs),
            "--warmup",
            str(args.warmup),
            "--variant",
            text,
        ]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=3600, env=os.environ.copy())
        found = re.search(r"Collected : (\d+)", proc.stderr)
        if proc.returncode != 0 or found is None:
            raise RuntimeError(f"{name} under callgrind failed:\n{proc.stderr[-3000:]}")
        counts[name] = int(found.group(1))
        print(f"{name}: {counts[name] / args.jobs / 1e6:.3f} M instructions per job", flush=True)
    base = counts[parse_variant(args.variant[0])[0]]
    return {
        name: {"instructions_per_job": round(n / args.jobs), "over_baseline": round(n / base, 4)}
        for name, n in counts.items()
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variant", action="append", default=[], help="name:JOB-JSON:SETTING=VALUE,... (repeatable)")
    p.add_argument("--jobs", type=int, default=200, help="jobs per variant per round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--warmup", type=int, default=30)
    p.add_argument("--measure", choices=("cpu", "instructions"), default="cpu")
    p.add_argument("--under-callgrind", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if not args.under_callgrind:
        args.variant = [PLAIN, *args.variant]
    if args.measure == "instructions" and not args.under_callgrind:
        result = measure_instructions(args)
    else:
        with LocalStack() as stack:
            url = stack.start_redis()
            stack.start_simulator()
            if args.under_callgrind:
                run_one_under_callgrind(args, stack, url)
                return 0
            result = measure_cpu(args, stack, url)
    for name, row in result.items():
        print(f"{name:<16} {json.dumps(row)}")
    summary = {"bench": "hotpath_bench", "measure": args.measure, "jobs": args.jobs, "variants": result}
    print(json.dumps(summary, separators=(",", ":")), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

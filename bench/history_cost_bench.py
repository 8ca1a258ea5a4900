"""What the job history costs when the operator uses it: listing, showing and replaying, vs a submit.

The history index is written by every job (its cost there: ``hotpath_bench.py --variant
'no_history::history_days=0'``); this measures its readers. One Redis and simulator; the history
is filled first, outside any measurement, with ``--fill`` jobs through the real pipeline
(``JobRunner.run``; one in ten fails with a non-retryable 400, so there are dead letters to
replay). Then one process per operation runs under callgrind, counting only the measured thread's
instructions (``hotpath_bench.py``'s method; Redis's own work is not counted):

* ``submit``: ``Client.submit`` of a plain job (the baseline of the ratios);
* ``replay``: ``llmq jobs replay``'s step per failed job (``replay_steps`` driven as the command
  drives them: record the copy in the original's day, submit the copy), entries listed beforehand;
* ``list``: ``llmq jobs list`` (``JobHistory.list``, 50 newest) and ``list_failed`` (``llmq jobs
  dead``: status ``failed``, 50 newest); ``show``: ``JobHistory.get`` of one job.

The worker's run of a replayed copy (a job with ``replay_of``) vs a plain job is
``hotpath_bench.py --variant 'replay_copy:{"replay_of": "x"}'``. Prints one JSON line.

    .venv/bin/python bench/history_cost_bench.py [--fill 1200] [--ops 50]
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from _measure import load_average  # noqa: E402

PLAIN_JOB = {
    "model": "openai:gpt-4o-mini",
    "messages": [{"role": "user", "content": "a short question"}],
    "max_tokens": 20,
}
OPS = ("submit", "replay", "list", "list_failed", "show")


def fill(url: str, stack: Any, jobs: int) -> None:
    """``jobs`` jobs through the real pipeline: one in ten fails (a 400 is not retried)."""
    from hotpath_bench import PLAIN, Variant

    from workers.contract import CompletionJob

    v = Variant(PLAIN, stack, url)
    try:
        for i in range(jobs):
            model = "openai:gpt-4o-mini~400" if i % 10 == 0 else "openai:gpt-4o-mini"
            job = CompletionJob.model_validate({**PLAIN_JOB, "id": f"hist-{uuid.uuid4().hex}", "model": model})
            v.runner.run(job)
    finally:
        v.close()


def child(args: argparse.Namespace) -> None:
    """Under callgrind: warm up, then ``--ops`` operations inside a ctypes callback."""
    from producers import Client
    from producers.history import HistoryQuery, JobHistory, drive
    from producers.replay import replay_steps
    from producers.settings import ProducerSettings

    with Client(settings=ProducerSettings(redis_url=args.url)) as client:
        history = JobHistory(client.redis)
        n, warm = args.ops, args.warmup
        one: Callable[[int], Any]
        if args.child == "submit":
            one = lambda i: client.submit({**PLAIN_JOB, "id": f"submit-{i}-{uuid.uuid4().hex}"})  # noqa: E731
        elif args.child == "replay":
            failed = history.list(HistoryQuery(status="failed", limit=n + warm))
            assert len(failed) == n + warm, f"{len(failed)} failed jobs in the history, {n + warm} wanted"

            def one(i: int) -> Any:
                outcome = drive(replay_steps(failed[i], now=time.time()), client.redis, history.script, client.submit)
                assert outcome.outcome == "submitted", outcome
                return outcome
        elif args.child in ("list", "list_failed"):
            query = HistoryQuery(status="failed" if args.child == "list_failed" else None, limit=50)

            def one(i: int) -> Any:
                assert len(history.list(query)) == 50
        else:
            ids = [e.summary.id for e in history.list(HistoryQuery(limit=n + warm))]

            def one(i: int) -> Any:
                assert history.get(ids[i]) is not None

        for i in range(warm):
            one(i)
        ctypes.CFUNCTYPE(None)(lambda: [one(warm + i) for i in range(n)] and None)()


def under_callgrind(op: str, args: argparse.Namespace, url: str) -> int:
    out = Path(tempfile.mkdtemp(prefix="history-cg-")) / "callgrind.out"
    argv = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", "--collect-atstart=no"]
    argv += ["--toggle-collect=_CallPythonObject", sys.executable, str(Path(__file__).resolve())]
    argv += ["--child", op, "--url", url, "--ops", str(args.ops), "--warmup", str(args.warmup)]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=3600, env=os.environ.copy())
    found = re.search(r"Collected : (\d+)", proc.stderr)
    shutil.rmtree(out.parent, ignore_errors=True)
    if proc.returncode != 0 or found is None:
        raise RuntimeError(f"{op} under callgrind failed:\n{proc.stderr[-3000:]}")
    return int(found.group(1))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--fill", type=int, default=1200, help="jobs in the history before measuring")
    p.add_argument("--ops", type=int, default=50, help="operations measured per kind")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--child", choices=OPS, help=argparse.SUPPRESS)
    p.add_argument("--url", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args)
        return 0
    from llmq.devstack import LocalStack

    load = [load_average()]
    counts: dict[str, float] = {}
    with LocalStack() as stack:
        url = stack.start_redis()
        stack.start_simulator()
        fill(url, stack, max(args.fill, 10 * 2 * (args.ops + args.warmup)))
        for op in OPS:
            counts[op] = under_callgrind(op, args, url) / args.ops
            print(f"{op:<12} {counts[op] / 1e6:.3f} M instructions per operation", flush=True)
    load.append(load_average())
    base = counts["submit"]
    result = {op: {"instructions": round(n), "over_submit": round(n / base, 4)} for op, n in counts.items()}
    summary = {"bench": "history_cost_bench", "fill": args.fill, "ops": args.ops, "load": load, "operations": result}
    print(json.dumps(summary, separators=(",", ":")), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The soak run: 30 minutes of steady load through three workers and the gateway while a worker is
SIGKILLed and restarted every minute, Redis is restarted once and sits at its memory limit for 30 s
twice, with simulator faults (429, 503, cut streams).

Prints one JSON line (jobs, kills, restarts, episodes, pushbacks, terminal events per job, ledger vs
the sum of the results, memory growth of the long-lived workers and the gateway after warm-up) and
asserts the run's promises (``tests/support/soak.py``: every job exactly one terminal event, ledger =
sum of results, spend within the budget, resident memory flat within 10 % after warm-up). Its ratio
against a baseline is the memory: each process's RSS at the end over its RSS after warm-up, in the
same run. The 2-minute version runs in CI: ``tests/integration/test_soak.py``.

    .venv/bin/python bench/soak_bench.py [--minutes 30] [--max-jobs 100000] [--rate 10] [--sse-clients 4]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support.soak import SoakConfig, check, run_soak


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--max-jobs", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rate", type=float, default=10.0, help="producer submits per second")
    parser.add_argument("--sse-clients", type=int, default=4)
    parser.add_argument("--kill-every", type=float, default=60.0, help="seconds between worker SIGKILLs")
    parser.add_argument("--full-s", type=float, default=30.0, help="seconds of each memory-limit episode")
    parser.add_argument("--faults", default="429=0.02,503=0.02,cut=0.02")
    parser.add_argument("--budget", type=float, default=100.0)
    parser.add_argument("--log-dir", default=None, help="where the processes' logs go (default: a temp dir)")
    args = parser.parse_args(argv)
    config = SoakConfig(
        duration_s=args.minutes * 60,
        max_jobs=args.max_jobs,
        workers=args.workers,
        concurrency=args.concurrency,
        rate_per_s=args.rate,
        sse_clients=args.sse_clients,
        kill_every_s=args.kill_every,
        full_s=args.full_s,
        fault_rates=args.faults,
        budget_usd=args.budget,
    )
    report = run_soak(config, log_dir=args.log_dir)
    print(json.dumps({"bench": "soak", **report.summary()}), flush=True)
    check(report)
    print("OK: every promise held", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The chaos run at full size: 2,000 jobs, three workers, one SIGKILLed and replaced every 5 % of
finished jobs, one Redis SIGKILL + restart half-way, simulator faults (429, 503, cut streams).

Prints the summary (jobs, kills, restarts, terminal events per job, runs per job, spend vs the
results' cost, the served-call bound and the budget) and asserts the run's promises: every job
exactly one terminal event, no job's superseded run writing after its successor, each served call
charged once, spend within the budget. The implementation is ``tests/support/chaos.py``, shared
with the 250-job slow test ``tests/integration/test_chaos.py``.

    .venv/bin/python bench/chaos_bench.py [--jobs 2000] [--workers 3] [--concurrency 4]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support.chaos import ChaosConfig, check, run_chaos


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--tokens-per-s", type=float, default=40.0)
    parser.add_argument("--faults", default="429=0.03,503=0.03,cut=0.03")
    parser.add_argument("--budget", type=float, default=100.0)
    parser.add_argument(
        "--models",
        default="openai:gpt-4o-mini",
        help="comma-separated models the jobs go to in turn, e.g. openai:gpt-4o-mini,azure:gpt-4o,"
        "gemini:gemini-2.5-flash,bedrock:us.amazon.nova-micro-v1:0 (every wire format the simulator speaks)",
    )
    args = parser.parse_args(argv)
    config = ChaosConfig(
        jobs=args.jobs,
        workers=args.workers,
        concurrency=args.concurrency,
        tokens_per_s=args.tokens_per_s,
        fault_rates=args.faults,
        budget_usd=args.budget,
        models=tuple(m.strip() for m in args.models.split(",") if m.strip()),
    )
    report = run_chaos(config)
    print(report.summary())
    check(report)
    print("OK: every promise held")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

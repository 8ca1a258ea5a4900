"""The soak run's 2-minute version (the 30-minute one is ``bench/soak_bench.py``; both use
``tests/support/soak.py``).

Three worker processes (one SIGKILLed and replaced every 30 s), the gateway with two SSE clients
streaming chat completions, a producer submitting steadily, simulator faults, one Redis SIGKILL +
restart and two 10 s episodes where Redis sits at its memory limit (every write that needs memory
refused; producers pushed back). Asserted (``check``): every job exactly one terminal event, the last
of a gap-free stream; the ledger equals the sum of the results (per job for jobs that ran once, the
killed runs' calls apart); the global spend equals what was charged per job; spend within the budget.
Memory is reported, not asserted, here: two minutes are all warm-up (the long run asserts it).
"""

from __future__ import annotations

import json

import pytest

from tests.support.soak import SoakConfig, check, run_soak

pytestmark = pytest.mark.slow


def test_a_two_minute_soak_loses_nothing_and_accounts_everything() -> None:
    config = SoakConfig(
        duration_s=120,
        workers=3,
        concurrency=4,
        rate_per_s=4,
        sse_clients=2,
        kill_every_s=30,
        redis_restart_at=0.5,
        full_at=(0.25, 0.7),
        full_s=10,
        budget_usd=5.0,
        check_rss=False,
    )
    report = run_soak(config)
    print(json.dumps(report.summary()))
    check(report)
    assert report.kills >= 2 and report.full_episodes == 2 and report.redis_restarts == 1
    assert report.producer_jobs > 0 and report.gateway_jobs > 0
    assert report.pushed_back  # the episodes pushed producers back

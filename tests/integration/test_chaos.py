"""A small chaos run (the 2,000-job version is ``bench/chaos_bench.py``; both use tests/support/chaos.py).

250 jobs over four wire formats (OpenAI, Azure, Gemini, Bedrock), three worker processes of which one is SIGKILLed and replaced three times, one Redis
SIGKILL + restart, simulator faults (429, 503, cut streams). Asserted (``check``): every job exactly
one terminal event, no job's superseded run writing after its successor, the ledger's spend equal
to the results' cost and bounded by the served calls, spend within the budget. No timing asserts.
"""

from __future__ import annotations

import pytest

from tests.support.chaos import ChaosConfig, check, run_chaos

pytestmark = pytest.mark.slow


#: Every wire format the simulator speaks, in turn (Bedrock's binary event stream included).
MODELS = ("openai:gpt-4o-mini", "azure:gpt-4o", "gemini:gemini-2.5-flash", "bedrock:us.amazon.nova-micro-v1:0")


def test_chaos_run_loses_nothing_and_charges_once() -> None:
    config = ChaosConfig(jobs=250, kill_at=(0.1, 0.35, 0.65), redis_restart_at=0.5, budget_usd=5.0, models=MODELS)
    report = run_chaos(config)
    print(report.summary())
    check(report)
    assert report.kills == 3 and report.redis_restarts == 1

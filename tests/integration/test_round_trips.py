"""Redis round trips a queued job costs the worker, counted on the test's private Redis with MONITOR.

The claim of a first delivery rides on the job's first event flush (``workers/jobs/pipeline.py``,
``JobRunner._run_once``): the job sends no claim script of its own. A redelivered job (a crash, a
hand-back, a re-queue) claims the ordinary way, in a round trip of its own, as before.
"""

from __future__ import annotations

import pytest

from producers import Client
from simulator.app import SimulatorThread
from tests.support.monitor import CommandLog
from workers.contract import JobKeys

#: A claim script names the job's claim, result, meta, events and cancel keys (``JobStore.claim``).
CLAIM = (5, ":claim")


def _job(i: int) -> dict[str, object]:
    return {"model": "openai:gpt-4o-mini", "messages": [{"role": "user", "content": f"round trips {i}"}]}


@pytest.mark.parametrize("stream", [True, False])
def test_a_first_delivery_sends_no_claim_of_its_own(
    worker, client: Client, simulator: SimulatorThread, redis_url: str, stream: bool
) -> None:
    client.submit({**_job(-1), "stream": stream}).result(timeout=30)  # warm-up: pools, connections, scripts
    with CommandLog(redis_url) as log:
        handles = [client.submit({**_job(i), "stream": stream}) for i in range(5)]
        results = [h.result(timeout=30) for h in handles]
    assert [r.status for r in results] == ["succeeded"] * 5
    assert log.scripts(*CLAIM) == 0  # was one per job
    assert log.scripts(6, ":events") == 5  # each job's first flush, its start, took the claim
    for h in handles:
        events = list(client.stream(h.id, timeout=5))
        assert [(e.run, e.seq) for e in events[:1]] == [(1, 0)] and events[0].type == "start"
        assert all(e.run == 1 for e in events)
        assert client.redis.hget(JobKeys(h.id).meta, "runs") == b"1"
        assert client.redis.get(JobKeys(h.id).claim) is None  # released by the ending

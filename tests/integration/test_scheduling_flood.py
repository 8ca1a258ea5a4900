"""A continuous interactive flood does not stop bulk work: classes share by weight, never strictly.

One worker (4 slots, 0.25 s calls: slot-bound, light on a shared CI machine), a bulk backlog far
longer than the run, and a producer that keeps interactive jobs queued for the whole flood
(``LLMQ_TEST_FLOOD_S``, 60 s). With the default weights (interactive 8 : bulk 1) the scheduler
picks, of every nine jobs taken while both classes have work, exactly one bulk job. Completions are
counted by class on one reply list, in completion order, between the flood's start and end: bulk
must have at least a ninth of them, less the worker's running window at each edge (4 + 4 jobs).
Whatever the machine's load, a slower producer only leaves the interactive queue empty more often,
which gives bulk *more*: the bound cannot fail from slowness, only from a scheduler that starves bulk.
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from pathlib import Path

import redis

from producers import Client
from simulator.app import SimulatorThread
from tests.integration.test_scheduling import _job, worker
from tests.support.waits import until
from workers.connections.schedule import tenant_list
from workers.contract import CompletionResult

FLOOD_S = float(os.environ.get("LLMQ_TEST_FLOOD_S", "60"))
SLOTS = 4


def test_bulk_keeps_its_share_through_an_interactive_flood(
    redis_url: str, redis_client: redis.Redis, simulator: SimulatorThread, client: Client, tmp_path: Path
) -> None:
    simulator.simulator.config.latency = 0.25
    reply = "llmq:reply:flood"
    for n in range(1000):  # more than the worker could run in the whole flood, even bulk alone
        client.submit(_job(f"bulk-{n}", "batchco", "bulk", reply))
    interactive = tenant_list("llmq", "interactive", "webco")
    stop = threading.Event()
    sent = [0]

    def flood() -> None:
        # keep a dozen interactive jobs queued, always: the class never runs out of work
        while not stop.is_set():
            while redis_client.llen(interactive) < 12 and not stop.is_set():
                client.submit(_job(f"web-{sent[0]}", "webco", "interactive", reply))
                sent[0] += 1
            stop.wait(0.02)

    with worker(redis_url, simulator, tmp_path, concurrency=SLOTS):
        until(lambda: redis_client.llen(reply) >= SLOTS, "the worker to start", 60)
        flooder = threading.Thread(target=flood, daemon=True)
        flooder.start()
        until(lambda: redis_client.llen(interactive) >= 12, "the flood to start", 60)
        start = redis_client.llen(reply)
        time.sleep(FLOOD_S)  # the flood's length, not an assertion
        end = redis_client.llen(reply)
        stop.set()
        flooder.join(30)
    window = [CompletionResult.model_validate_json(raw).id for raw in redis_client.lrange(reply, start, end - 1)]
    counts = Counter(job_id.split("-")[0] for job_id in window)
    total = counts["bulk"] + counts["web"]
    print(
        f"{FLOOD_S:g} s flood: {dict(counts)} completed; bulk share {counts['bulk'] / max(1, total):.3f} (weight 1/9)"
    )
    assert counts["web"] > 0 and total > 9
    assert counts["bulk"] >= total // 9 - 2 * SLOTS, counts
    assert redis_client.llen(tenant_list("llmq", "bulk", "batchco")) > 0  # bulk never ran out: its share was tested

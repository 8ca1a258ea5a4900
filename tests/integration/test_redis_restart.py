"""A durable Redis (AOF, as shipped) SIGKILLed and restarted in the middle of 50 jobs.

Real parts only: a ``redis-server`` with ``appendonly yes / appendfsync everysec``, two worker
processes, the simulator and a producer. Jobs that were running when Redis died lose their
connection mid-stream: they must wait for Redis and run again (or end with a terminal event),
never be acknowledged and forgotten. Asserted: every job ends exactly once, the ledger's spend
survives the restart, and no served call is charged twice.
"""

from __future__ import annotations

import json
import os
import time
import urllib.request

import pytest

from llmq.devstack import LocalStack
from llmq.localredis import ManagedRedis
from producers import Client
from tests.support.spend import global_spent_usd, one_call_usd, results_stored
from tests.support.waits import until
from workers.contract import TERMINAL_EVENT_TYPES

pytestmark = pytest.mark.slow

MODEL = "openai:gpt-4o-mini"
JOBS = 50
PROMPT = [{"role": "user", "content": "ride out a restart"}]
HANG_GUARD_S = 300


def _served_calls(simulator_url: str) -> int:
    with urllib.request.urlopen(simulator_url + "/_sim/stats", timeout=10) as reply:
        stats = json.load(reply)
    return int(stats["requests"])


# Issue #12's last window is closed: the worker's fetch (workers/runtime/broker.py) pops a message and
# records it as held in one Lua script, so a Redis SIGKILL at any instant leaves every message either
# queued or held (and restored once its holder stops refreshing it), in memory and in the AOF alike.
def test_durable_redis_killed_and_restarted_mid_run_loses_no_job() -> None:
    server = ManagedRedis(durable=True)
    server.start()
    url = server.url
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMQ_")}
    env.update({"LLMQ_REDIS_URL": url, "LLMQ_MONTHLY_BUDGET_USD": "100"})
    try:
        with LocalStack(env=env) as stack, Client(url) as client:
            stack.start_redis()  # adopts ours (LLMQ_REDIS_URL answers)
            sim = stack.start_simulator(tokens_per_s=8)  # 20 tokens in ~2.5 s
            for name in ("w1", "w2"):
                stack.start_worker(pool="threads", concurrency=8, name=name)
            stack.wait_for_workers(2)
            ids = [f"restart-{i}" for i in range(JOBS)]
            for job_id in ids:
                client.submit({"model": MODEL, "messages": PROMPT, "max_tokens": 20, "id": job_id})

            # kill Redis once some jobs finished and others are still queued or running
            until(lambda: (results_stored(url, ids) or 0) >= 5, "five jobs to finish", HANG_GUARD_S, 0.1)
            spent_before = global_spent_usd(url)
            assert spent_before > 0
            server.kill()
            time.sleep(1.0)  # down for a moment (not a timing assertion: any length would do)
            server.start()
            assert global_spent_usd(url) >= spent_before  # the AOF kept every acknowledged charge
            finished_at_restart = results_stored(url, ids) or 0
            assert finished_at_restart < JOBS, "every job had finished: the restart hit nothing"

            results = {job_id: client.result(job_id, timeout=HANG_GUARD_S) for job_id in ids}
            for job_id, result in results.items():
                events = list(client.stream(job_id, timeout=30))
                terminal = [e for e in events if e.type in TERMINAL_EVENT_TYPES]
                assert len(terminal) == 1 and events[-1] is terminal[0], (job_id, [e.type for e in events])
                assert terminal[0].result is not None and terminal[0].result.status == result.status
            statuses = [r.status for r in results.values()]
            print(f"{finished_at_restart} of {JOBS} done before the restart; statuses {sorted(set(statuses))}")
            assert statuses == ["succeeded"] * JOBS  # a run that lost Redis waited for it and ran again

            one_call = one_call_usd(MODEL, PROMPT, 20)
            spent = global_spent_usd(url)
            succeeded = statuses.count("succeeded")
            assert spent >= spent_before
            assert spent >= succeeded * one_call - 1e-9  # every answered job was charged
            assert spent <= _served_calls(sim) * one_call + 1e-9  # no served call charged twice
    finally:
        server.stop()


def test_a_gevent_worker_rides_out_a_restart_without_a_traceback() -> None:
    """An idle ``llmq worker -P gevent`` whose Redis restarts: its log says so in lines, without the
    tracebacks gevent printed when Celery's remote-control loop died with the connection or Celery's
    notice about its future default, and it runs the next job."""
    server = ManagedRedis(durable=True)
    server.start()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMQ_")} | {"LLMQ_REDIS_URL": server.url}
    try:
        with LocalStack(env=env) as stack, Client(server.url) as client:
            stack.start_redis()
            stack.start_simulator()
            stack.start_worker(pool="gevent", concurrency=4, name="green")
            stack.wait_for_workers(1)
            log = stack.log_dir / "green.log"
            server.kill()
            until(
                lambda: "Connection to broker lost" in log.read_text(errors="replace"),
                lambda: "the worker to lose the broker: " + log.read_text(errors="replace")[-3000:],
                HANG_GUARD_S,
                0.2,
            )
            time.sleep(2.0)  # down a while, so its loops meet the refused reconnects (not a timing check)
            server.start()
            job = {"model": MODEL, "messages": PROMPT, "max_tokens": 20, "id": "after-restart"}
            assert client.submit(job).result(timeout=HANG_GUARD_S).status == "succeeded"
            text = log.read_text(errors="replace")
            assert "Traceback" not in text, text[-4000:]
            assert "remote control lost the broker" in text, text[-4000:]
            # nor Celery's eight-line notice about a future default at each lost connection: the
            # choice is made (workers/runtime/app.py), and Celery's logging set-up must not undo its filter
            assert "worker_cancel_long_running_tasks_on_connection_loss" not in text, text[-4000:]
    finally:
        server.stop()

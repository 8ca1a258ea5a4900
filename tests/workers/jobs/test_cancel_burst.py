"""A burst of cancels ends every cancelled job at once, whatever the other calls are doing.

Twelve jobs at a time, each streaming from a model whose first token is a minute away; each is
cancelled as its ``start`` event appears (after a random 0-10 ms), forty rounds. Before the fix one
job in a few hundred sat in ``recv`` until its read timeout (120 s): the canceller closed its
response from the cancel watcher's thread while the reader, woken by the socket's shutdown, closed
it too, and across threads that double close left another call's connection closed without a
shutdown under its reader (``StreamingResponse._abandon`` in ``workers/llm/httpclient.py``; CI's
``test_history`` met it once in ten cancels under load).
"""

from __future__ import annotations

import random
import threading
import time

import redis

from producers import Client
from simulator.app import SimulatorThread
from simulator.env import provider_env
from tests.support.waits import until
from workers.contract import CompletionJob, JobKeys, Message
from workers.jobs.pipeline import JobOutcome, JobRunner
from workers.runtime.resources import WorkerResources
from workers.settings import Settings

ROUNDS, AT_ONCE = 40, 12
#: A cancelled job ends within this (a hang guard: each ends in milliseconds; the bug held one 120 s).
ENDS_WITHIN_S = 10.0


def _run(runner: JobRunner, job: CompletionJob, outcomes: dict[str, JobOutcome]) -> None:
    outcomes[job.id] = runner.run(job, first_delivery=True)


def test_a_burst_of_cancels_ends_every_job_at_once(
    redis_url: str, redis_client: redis.Redis, simulator: SimulatorThread
) -> None:
    settings = Settings(redis_url=redis_url, pool="threads", concurrency=32, coalesce_ms=20)
    resources = WorkerResources.build(settings, watch_cancels=True, provider_env=provider_env(simulator.url))
    runner = JobRunner(resources)
    client = Client(redis_url)
    rng = random.Random(7)
    stuck: list[str] = []
    statuses: list[str | None] = []
    try:
        for rnd in range(ROUNDS):
            jobs = [
                CompletionJob(model="openai:gpt-4o-mini~slow@60", messages=[Message(role="user", content=f"{rnd}-{i}")])
                for i in range(AT_ONCE)
            ]
            outcomes: dict[str, JobOutcome] = {}
            threads = []
            for job in jobs:
                thread = threading.Thread(target=_run, args=(runner, job, outcomes), daemon=True)
                thread.start()
                threads.append(thread)
            started = time.monotonic()
            for job in jobs:
                until(
                    lambda j=job: redis_client.exists(JobKeys(j.id).events), "the job's start event", 30, poll_s=0.001
                )
                time.sleep(rng.choice([0.0, 0.001, 0.003, 0.01]))
                client.cancel(job.id)
            for job, thread in zip(jobs, threads, strict=True):
                thread.join(max(0.0, ENDS_WITHIN_S - (time.monotonic() - started)))
                if thread.is_alive():
                    stuck.append(job.id)
                else:
                    result = outcomes[job.id].result
                    statuses.append(result.status if result is not None else None)
            if stuck:
                break
        assert stuck == []  # every cancelled job ended at once
        assert set(statuses) == {"cancelled"} and len(statuses) == ROUNDS * AT_ONCE
    finally:
        client.close()
        resources.close()

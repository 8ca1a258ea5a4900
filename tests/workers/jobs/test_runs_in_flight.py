"""``JobRunner.runs_in_flight``: a run counts until its bookkeeping after the terminal write is done.

A job's result is visible (stored, pushed to its reply list) before the run that wrote it has
counted it in the worker's metrics and logged it: a test or an operator that saw a result and then
reads the worker's metrics waits for ``runs_in_flight() == 0`` first, or reads a count one short.
"""

from __future__ import annotations

import threading

from simulator.app import SimulatorThread
from simulator.env import provider_env
from tests.support.waits import until
from workers.contract import CompletionJob, Message
from workers.contract.keys import JobKeys
from workers.jobs.pipeline import JobOutcome, JobRunner
from workers.runtime.resources import WorkerResources
from workers.settings import Settings


def test_a_run_counts_in_flight_until_its_metrics_count_it(redis_url: str, simulator: SimulatorThread) -> None:
    settings = Settings(redis_url=redis_url, pool="threads", concurrency=2)
    resources = WorkerResources.build(settings, watch_cancels=False, provider_env=provider_env(simulator.url))
    runner = JobRunner(resources)
    registry = resources.metrics.registry
    try:
        assert runner.runs_in_flight() == 0
        job = CompletionJob(model="openai:gpt-4o-mini~slow@0.5", messages=[Message(role="user", content="hi")])
        outcomes: list[JobOutcome] = []
        thread = threading.Thread(target=lambda: outcomes.append(runner.run(job, first_delivery=True)))
        thread.start()
        until(lambda: simulator.simulator.stats.requests >= 1, "the call under way", 30)
        assert runner.runs_in_flight() == 1  # the first token is 0.5 s away: the run holds its slot
        assert registry.get_sample_value("llmq_jobs_running", {"priority": "normal"}) == 1
        until(lambda: resources.redis.exists(JobKeys(job.id).result), "the result stored", 30)
        until(lambda: runner.runs_in_flight() == 0, "the run's bookkeeping to end", 30)
        # once no run is in flight, every metric counts the job
        assert registry.get_sample_value("llmq_jobs_running", {"priority": "normal"}) == 0
        assert registry.get_sample_value("llmq_jobs_total", {"status": "succeeded", "prompt": ""}) == 1
        thread.join(30)
        assert [o.result.status for o in outcomes if o.result is not None] == ["succeeded"]
    finally:
        resources.close()

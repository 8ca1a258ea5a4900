"""An ended job's objects are freed as it ends: no reference cycle keeps its run alive.

A cycle (the run -> its publisher or meter -> a callback closing over the run) kept every object of
an ended job (its request, streams, events, models: ~120 objects) until Python's next full
collection, which under 200 slots came every few hundred jobs: their memory was the worker's peak.
"""

from __future__ import annotations

import gc

import pytest

from simulator.app import SimulatorThread
from simulator.env import provider_env
from workers.contract import CompletionJob, Message
from workers.jobs.pipeline import JobRunner
from workers.runtime.resources import WorkerResources
from workers.settings import Settings


@pytest.mark.parametrize("first_delivery", [False, True])  # the claim taken by its own round trip, or by the start
def test_an_ended_job_leaves_no_reference_cycle(
    redis_url: str, simulator: SimulatorThread, first_delivery: bool
) -> None:
    settings = Settings(redis_url=redis_url, pool="threads", concurrency=2)
    resources = WorkerResources.build(settings, watch_cancels=False, provider_env=provider_env(simulator.url))
    runner = JobRunner(resources)
    try:
        runner.run(CompletionJob(model="openai:gpt-4o-mini", messages=[Message(role="user", content="warm up")]))
        gc.collect()
        gc.disable()
        try:
            for i in range(3):
                job = CompletionJob(model="openai:gpt-4o-mini", messages=[Message(role="user", content=f"hi {i}")])
                result = runner.run(job, first_delivery=first_delivery).result
                assert result is not None and result.status == "succeeded"
            del result
            gc.set_debug(gc.DEBUG_SAVEALL)
            left = gc.collect()
            kinds = sorted({type(o).__name__ for o in gc.garbage})
        finally:
            gc.set_debug(0)
            gc.garbage.clear()
            gc.enable()
        assert (left, kinds) == (0, [])
    finally:
        resources.close()

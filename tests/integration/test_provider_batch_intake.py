"""Jobs handed straight to the provider batch lane by their producers (no queue message, no run before
their batch), taken and ended in bulk by the batcher: producer -> real Redis -> the batcher (driven
by the test, as in ``test_provider_batches.py``) -> the simulator's batch APIs -> the jobs' ends.

A worker announces its batcher's intake in its presence; here a presence published by the test
announces it (the fixture's worker runs no batcher thread: the test ticks one).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from producers import Client
from producers.settings import ProducerSettings
from simulator.app import SimulatorThread
from tests.integration.test_provider_batches import (  # noqa: F401  (batch_app is a fixture)
    _job,
    batch_app,
    batcher_for,
    check_mixed_outcomes,
    line_state,
    live_requests,
    pump,
    sim_batches,
)
from tests.support.spend import global_spent_usd
from tests.support.taskevents import EventCapture
from tests.support.waits import until
from workers.contract import DEFAULT_QUEUE, JobKeys
from workers.contract.presence import BATCH_INTAKE_KEY, BatchIntake
from workers.runtime.batcher import Batcher
from workers.runtime.presence import PresencePublisher
from workers.runtime.state import LLMQCelery

#: The fixture's [batch]: live_margin_s 50, window_s 1000 + margin_s 100.
INTAKE = BatchIntake(allow_min_s=50, auto_min_s=1100)


@pytest.fixture
def intake_client(batch_app: LLMQCelery, redis_url: str) -> Iterator[Client]:  # noqa: F811
    """A producer that sees a worker announce its batcher's intake."""
    res = batch_app.llmq.resources()
    presence = PresencePublisher(res.redis, "intake-test", [DEFAULT_QUEUE], res.catalog, batch_intake=INTAKE)
    presence.publish()
    with Client(settings=ProducerSettings(redis_url=redis_url, queue=DEFAULT_QUEUE)) as client:
        yield client
    presence.stop()


def _stream_types(r: redis.Redis, job_id: str) -> list[str]:
    entries: Any = r.xrange(JobKeys(job_id).events)
    return [json.loads(fields[b"e"])["type"] for _, fields in entries]


def test_a_handed_over_job_is_one_task_one_start_one_end_at_the_batch_price(
    batch_app: LLMQCelery,  # noqa: F811
    intake_client: Client,
    simulator: SimulatorThread,
    redis_client: redis.Redis,
    redis_url: str,
) -> None:
    """Jobs that may wait go to the lane in their submit (state new, no message), the batcher takes
    them (start event, reservation), sends their batches and ends them itself: one start, usage and
    done each, one claim (runs = 1), Flower's received/started/succeeded once, half the live price."""
    batcher = batcher_for(batch_app)
    models = ["openai:gpt-4o", "anthropic:claude-sonnet-4-5"] * 3
    before = global_spent_usd(redis_url)
    with EventCapture(redis_url) as capture:
        handles = [intake_client.submit(_job(m, max_tokens=40)) for m in models]
        ids = [h.id for h in handles]
        assert [line_state(redis_client, i) for i in ids] == ["new"] * len(ids)
        assert redis_client.llen(BATCH_INTAKE_KEY) == len(ids)
        registry = batch_app.llmq.resources().metrics.registry
        assert registry.get_sample_value("llmq_provider_batch_lines_handed") == len(ids)
        pump(batcher, lambda: all(redis_client.exists(JobKeys(i).result) for i in ids), "the jobs' ends")
        results = [h.result(timeout=30) for h in handles]

        def three_each() -> bool:
            batcher.tick()
            seen = capture.task_events(set(ids))
            return all(len(seen.get(i, [])) == 3 for i in ids)

        until(three_each, "each job's received, started and succeeded", 60)
        flower = capture.task_events(set(ids))
    assert [r.status for r in results] == ["succeeded"] * len(ids)
    assert redis_client.llen(BATCH_INTAKE_KEY) == 0
    for job_id in ids:
        assert _stream_types(redis_client, job_id) == ["start", "delta", "usage", "done"]
        assert redis_client.hget(JobKeys(job_id).meta, "runs") == b"1"
        assert flower[job_id] == ["task-received", "task-started", "task-succeeded"]
        assert live_requests(simulator, job_id) == 0
    assert sim_batches(simulator)["lines"] == len(ids)
    spent = global_spent_usd(redis_url) - before
    assert spent == pytest.approx(sum(r.cost_usd or 0 for r in results), abs=1e-5)
    live = intake_client.submit(_job("openai:gpt-4o", max_tokens=40, batch=None)).result(timeout=60)
    assert live.cost_usd is not None and results[0].cost_usd is not None
    assert results[0].usage.completion_tokens == live.usage.completion_tokens
    assert results[0].cost_usd == pytest.approx(live.cost_usd / 2, rel=0.01)


def test_what_the_lane_cannot_take_is_sent_on_to_the_queue_and_runs_once(
    batch_app: LLMQCelery,  # noqa: F811
    intake_client: Client,
    simulator: SimulatorThread,
    redis_client: redis.Redis,
) -> None:
    """A handed-over job whose deadline came near before the batcher took it, and one cancelled
    meanwhile, go to the queue: their runs end them (live once, cancelled), no batch carries them.
    An auto job whose deadline is too short for a batch is never handed over."""
    batcher = batcher_for(batch_app, clock=lambda: time.time() + 1960)
    near = intake_client.submit(_job("openai:gpt-4o-mini", deadline_s=2000))
    gone = intake_client.submit(_job("openai:gpt-4o-mini"))
    short = intake_client.submit(_job("openai:gpt-4o-mini", batch="auto", deadline_s=600))
    assert line_state(redis_client, near.id) == line_state(redis_client, gone.id) == "new"
    assert line_state(redis_client, short.id) is None  # a queue message: its run decides
    intake_client.cancel(gone.id)
    pump(batcher, lambda: redis_client.llen(BATCH_INTAKE_KEY) == 0, "the intake taken")
    assert near.result(timeout=60).status == "succeeded"
    assert gone.result(timeout=60).status == "cancelled"
    assert short.result(timeout=60).status == "succeeded"
    assert live_requests(simulator, near.id) == 1 and live_requests(simulator, gone.id) == 0
    assert sim_batches(simulator)["lines"] == 0
    for handle in (near, gone):  # sent on unstarted: its run started it and ran it live (or cancelled it)
        assert line_state(redis_client, handle.id) == "live"
        assert redis_client.hget(JobKeys(handle.id).batch, "onward") == b"1"
    assert _stream_types(redis_client, near.id)[0] == "start"
    assert _stream_types(redis_client, gone.id) == ["cancelled"]  # as any job cancelled before it started


def test_a_batcher_killed_while_taking_leaves_every_job_to_the_next_once(
    batch_app: LLMQCelery,  # noqa: F811
    intake_client: Client,
    redis_client: redis.Redis,
) -> None:
    """The intake step repeated (a batcher that died after taking, before the ids left the list) and
    the bulk ending repeated (one that died after ending, before its batch was finished): each job
    is parked in its group once, has one start and one end, and its reservation is held once."""
    first = batcher_for(batch_app)
    handles = [intake_client.submit(_job("anthropic:claude-sonnet-4-5")) for _ in range(4)]
    ids = [h.id for h in handles]
    assert first._intake is not None
    first._intake.take(ids)  # ... and dies before store.took(): the ids stay listed
    assert [line_state(redis_client, i) for i in ids] == ["pending"] * 4
    assert redis_client.llen(BATCH_INTAKE_KEY) == 4
    reserved = _reserved(redis_client)
    second = batcher_for(batch_app)
    second._intake.take(ids)  # type: ignore[union-attr]  # taken again: nothing twice
    assert _reserved(redis_client) == pytest.approx(reserved)
    group: Any = redis_client.lrange("llmq:{pbatch}:group:anthropic:claude-sonnet-4-5", 0, -1)
    assert sorted(g.decode() for g in group) == sorted(ids)
    pump(second, lambda: all(redis_client.exists(JobKeys(i).result) for i in ids), "the jobs' ends")
    assert redis_client.llen(BATCH_INTAKE_KEY) == 0
    assert second._ender is not None
    lines = second.store.lines_of(ids)
    again = [(line, second.lane.outcome(line)) for line in lines if line is not None]
    ended, back = second._ender.end(again)  # an ending repeated: the stored results stop it
    assert ended == [] and back == []
    for job_id in ids:
        assert _stream_types(redis_client, job_id) == ["start", "delta", "usage", "done"]
    assert _reserved(redis_client) == pytest.approx(0.0, abs=1e-9)


def _reserved(r: redis.Redis) -> float:
    from workers.accounting.ledger import GLOBAL_SCOPE, Ledger

    scope = next(s for s in Ledger(r).show().scopes if s.scope == GLOBAL_SCOPE)
    return float(scope.reserved_usd)


def test_the_async_client_hands_over_too(
    batch_app: LLMQCelery,  # noqa: F811
    intake_client: Client,
    redis_client: redis.Redis,
    redis_url: str,
) -> None:
    """AsyncClient (the gateway's) hands a job that may wait to the lane in its submit, as Client does."""
    import asyncio

    from producers import AsyncClient

    async def submit() -> str:
        async with AsyncClient(settings=ProducerSettings(redis_url=redis_url, queue=DEFAULT_QUEUE)) as client:
            return (await client.submit(_job("openai:gpt-4o"))).id

    job_id = asyncio.run(submit())
    assert line_state(redis_client, job_id) == "new"
    pump(batcher_for(batch_app), lambda: bool(redis_client.exists(JobKeys(job_id).result)), "the job's end")
    assert intake_client.result(job_id, timeout=30).status == "succeeded"


def test_a_job_marked_to_go_on_to_the_queue_but_not_sent_is_sent_by_the_next_batcher(
    batch_app: LLMQCelery,  # noqa: F811
    intake_client: Client,
    simulator: SimulatorThread,
    redis_client: redis.Redis,
) -> None:
    """A batcher that marked a handed-over job to go on to the queue (live, unstarted) and died before
    sending it: its id is still on the intake list, and the next batcher sends it; it runs live once."""
    handle = intake_client.submit(_job("openai:gpt-4o-mini"))
    batcher = batcher_for(batch_app)
    batcher.store.send_on([handle.id])  # ... and the batcher dies here
    assert line_state(redis_client, handle.id) == "live"
    pump(batcher, lambda: redis_client.llen(BATCH_INTAKE_KEY) == 0, "the intake taken")
    assert handle.result(timeout=60).status == "succeeded"
    assert live_requests(simulator, handle.id) == 1
    assert _stream_types(redis_client, handle.id)[0] == "start"


def test_mixed_outcomes_of_handed_over_jobs_each_end_once_with_their_status(
    batch_app: LLMQCelery,  # noqa: F811
    intake_client: Client,
    simulator: SimulatorThread,
    redis_client: redis.Redis,
    redis_url: str,
) -> None:
    """The mixed-outcomes scenario of test_provider_batches.py with the jobs handed over by their
    producer: the batcher takes them (its first step), then everything runs as for parked lines."""

    def taken(batcher: Batcher, job_ids: list[str]) -> None:
        assert [line_state(redis_client, i) for i in job_ids] == ["new"] * len(job_ids)
        assert batcher._intake is not None
        batcher._intake.take(job_ids)  # the step a tick takes first
        batcher.store.took(len(job_ids))
        assert [line_state(redis_client, i) for i in job_ids] == ["pending"] * len(job_ids)

    check_mixed_outcomes(batch_app, intake_client, simulator, redis_client, redis_url, taken)

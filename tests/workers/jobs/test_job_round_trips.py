"""The round trips a job's run makes, and what rides on which.

A first delivery's claim is taken by its first event flush (``JobRunner.run(first_delivery=True)``):
the flush takes the claim only when the job is as no run left it, with the claim's own writes; else
it writes nothing and the run claims the ordinary way, so a job run before, claimed by a live run,
cancelled or ended behaves exactly as with the ordinary claim. The deltas still coalescing when a
job's last turn ends go out with its ending.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from simulator.app import SimulatorThread
from simulator.env import provider_env
from tests.support.monitor import CommandLog
from workers.contract import CompletionJob, CompletionResult, DoneEvent, JobKeys, Message, StartEvent, parse_event
from workers.jobs.events import ClaimMissedError, EventPublisher
from workers.jobs.pipeline import JobRunner
from workers.runtime.resources import WorkerResources
from workers.settings import Settings

LEASE_MS = 10_000
#: The ordinary claim script names the job's claim, result, meta, events and cancel keys.
CLAIM = (5, ":claim")
#: The webhook deliverer's poll for due deliveries names this one key (``workers/runtime/webhooks.py``).
WEBHOOKS_DUE = "llmq:webhooks:{deliveries}:due"


def _events(client: redis.Redis, keys: JobKeys) -> list:
    return [parse_event(fields[b"e"]) for _, fields in client.xrange(keys.events)]


def _publisher(client: redis.Redis, keys: JobKeys, token: str = "tok-1") -> EventPublisher:
    return EventPublisher(
        client, keys, run=1, start_seq=-1, coalesce_s=0, token=token, claim_lease_ms=LEASE_MS, claim_first=True
    )


def test_the_first_flush_takes_the_claim_of_an_untouched_job(redis_client: redis.Redis) -> None:
    keys = JobKeys("cf-1")
    claimed: list[bool] = []
    pub = _publisher(redis_client, keys)
    pub.on_claimed = lambda: claimed.append(True)
    pub.emit(StartEvent(job_id="cf-1", seq=0, model="openai:m"))
    assert claimed == [True] and not pub.claim_pending
    assert redis_client.get(keys.claim) == b"tok-1"
    assert 0 < redis_client.pttl(keys.claim) <= LEASE_MS
    assert redis_client.hgetall(keys.meta) == {b"runs": b"1", b"state": b"running"}
    assert [(e.type, e.run, e.seq) for e in _events(redis_client, keys)] == [("start", 1, 0)]
    pub.delta("hi")  # later flushes check and renew the claim as before
    assert redis_client.get(keys.claim) == b"tok-1" and claimed == [True]
    redis_client.set(keys.claim, "tok-2")  # another run took the job: this one is fenced again
    with pytest.raises(Exception, match="lost its claim"):
        pub.delta("more")


def test_a_first_flush_that_ends_the_job_claims_and_releases(redis_client: redis.Redis) -> None:
    keys = JobKeys("cf-end")
    pub = _publisher(redis_client, keys)
    done = DoneEvent(job_id="cf-end", seq=0, result=CompletionResult(id="cf-end", status="failed"))
    pub.emit(done, writes=[("SET", keys.result, "r"), ("HSET", keys.meta, "state", "failed")], release_claim=True)
    assert redis_client.get(keys.claim) is None and redis_client.get(keys.result) == b"r"
    assert redis_client.hgetall(keys.meta) == {b"runs": b"1", b"state": b"failed"}


@pytest.mark.parametrize("touched", ["result", "claim", "cancel", "runs", "attempts", "events"])
def test_a_job_not_as_no_run_left_it_is_not_claimed_by_the_flush(redis_client: redis.Redis, touched: str) -> None:
    keys = JobKeys(f"cf-{touched}")
    setup = {
        "result": lambda: redis_client.set(keys.result, "{}"),
        "claim": lambda: redis_client.set(keys.claim, "another-run", px=LEASE_MS),
        "cancel": lambda: redis_client.set(keys.cancel, "1"),
        "runs": lambda: redis_client.hset(keys.meta, "runs", 1),
        "attempts": lambda: redis_client.hset(keys.meta, "attempts", "[]"),
        "events": lambda: redis_client.xadd(keys.events, {"e": "{}"}, id="0-1"),
    }
    setup[touched]()
    before = {k: redis_client.dump(k) for k in (keys.result, keys.claim, keys.cancel, keys.meta, keys.events)}
    pub = _publisher(redis_client, keys)
    with pytest.raises(ClaimMissedError):
        pub.emit(StartEvent(job_id=keys.job_id, seq=0, model="openai:m"))
    assert pub.claim_pending
    assert {k: redis_client.dump(k) for k in before} == before  # nothing written


@pytest.fixture
def runner(redis_url: str, simulator: SimulatorThread) -> Iterator[JobRunner]:
    settings = Settings(redis_url=redis_url, pool="threads", concurrency=2, claim_lease_s=10, coalesce_ms=0)
    resources = WorkerResources.build(settings, watch_cancels=False, provider_env=provider_env(simulator.url))
    try:
        yield JobRunner(resources)
    finally:
        resources.close()


def _job(job_id: str, **extra: object) -> CompletionJob:
    return CompletionJob(id=job_id, model="openai:gpt-4o-mini", messages=[Message(role="user", content="hi")], **extra)


def test_a_first_delivery_runs_with_its_claim_taken_by_its_start(
    runner: JobRunner, redis_client: redis.Redis, redis_url: str
) -> None:
    runner.run(_job("cf-warm"), first_delivery=True)
    keys = JobKeys("cf-run")
    with CommandLog(redis_url) as log:
        outcome = runner.run(_job("cf-run"), first_delivery=True)
    assert outcome.result is not None and outcome.result.status == "succeeded"
    assert log.scripts(*CLAIM) == 0 and log.scripts(6, ":events") == 1  # the start flush took it
    # the job's scripts: its flushes, the reserve and the settle; not the worker's periodic ones (the
    # webhook deliverer's poll every 0.5 s, the claim heartbeat's renewal every 2 s: in this window
    # when the run is slow, on a loaded machine)
    jobs_own = log.count("EVALSHA") - log.scripts(1, WEBHOOKS_DUE) - log.scripts(1, ":claim")
    assert jobs_own == log.scripts(6, ":events") + log.scripts(4, ":events") + 2
    events = _events(redis_client, keys)
    assert events[0].type == "start" and {e.run for e in events} == {1}
    assert [e.seq for e in events] == list(range(len(events)))
    assert redis_client.hget(keys.meta, "runs") == b"1" and redis_client.get(keys.claim) is None


def test_a_first_delivery_of_a_job_run_before_claims_the_ordinary_way(
    runner: JobRunner, redis_client: redis.Redis, redis_url: str
) -> None:
    """A job whose message was delivered as new although it ran before (its events and run count are
    there): the start flush writes nothing, the ordinary claim numbers the run 2, after the old events."""
    keys = JobKeys("cf-again")
    runner.run(_job("cf-again"))
    redis_client.delete(keys.result)  # as if run 1 died before its ending
    old = len(_events(redis_client, keys))
    with CommandLog(redis_url) as log:
        outcome = runner.run(_job("cf-again"), first_delivery=True)
    assert outcome.result is not None and outcome.result.status == "succeeded"
    assert log.scripts(*CLAIM) == 1
    events = _events(redis_client, keys)
    assert [e.seq for e in events] == list(range(len(events)))
    assert [e.run for e in events[old:]] == [2] * (len(events) - old) and events[old].type == "start"
    assert redis_client.hget(keys.meta, "runs") == b"2"


def test_a_first_delivery_claimed_by_a_live_run_is_requeued_untouched(
    runner: JobRunner, redis_client: redis.Redis
) -> None:
    keys = JobKeys("cf-busy")
    redis_client.set(keys.claim, "a-live-run", px=60_000)
    outcome = runner.run(_job("cf-busy"), first_delivery=True)
    assert outcome.skipped == "running on another worker" and outcome.requeue_after_s == 10
    assert redis_client.xlen(keys.events) == 0 and not redis_client.hexists(keys.meta, "runs")
    assert redis_client.get(keys.claim) == b"a-live-run"


def test_a_first_delivery_cancelled_before_it_starts_ends_without_a_start(
    runner: JobRunner, redis_client: redis.Redis
) -> None:
    keys = JobKeys("cf-cancel")
    redis_client.set(keys.cancel, "1")
    outcome = runner.run(_job("cf-cancel"), first_delivery=True)
    assert outcome.result is not None and outcome.result.status == "cancelled"
    assert [(e.type, e.run) for e in _events(redis_client, keys)] == [("cancelled", 1)]  # as the ordinary claim


def test_a_first_delivery_of_an_ended_job_is_not_run_again(runner: JobRunner, redis_client: redis.Redis) -> None:
    runner.run(_job("cf-done"))
    keys = JobKeys("cf-done")
    events = redis_client.xlen(keys.events)
    outcome = runner.run(_job("cf-done"), first_delivery=True)
    assert outcome.skipped == "already finished" and outcome.result is not None
    assert redis_client.xlen(keys.events) == events and redis_client.hget(keys.meta, "runs") == b"1"


def test_a_first_delivery_that_fails_before_its_start_claims_with_its_ending(
    runner: JobRunner, redis_client: redis.Redis
) -> None:
    """A job that ends before its start event (here: its deadline passed while it was queued) ends in
    one flush that takes and releases the claim."""
    keys = JobKeys("cf-late")
    outcome = runner.run(_job("cf-late", deadline_s=1, submitted_at=1.0), first_delivery=True)
    assert outcome.result is not None and outcome.result.status == "failed"
    assert [(e.type, e.run, e.seq) for e in _events(redis_client, keys)] == [("error", 1, 0)]
    assert redis_client.hget(keys.meta, "runs") == b"1" and redis_client.get(keys.claim) is None


def test_the_last_deltas_of_a_job_go_out_with_its_ending(redis_url: str, simulator: SimulatorThread) -> None:
    """A job that ends after its one turn sends the deltas still coalescing with its ending (the
    terminal flush sends them before its events), not in a flush of their own just before it: here
    every delta after the first waits in a long coalescing window, so the job flushes three times
    (its start, its first delta, its ending; was four), and its events are the same."""
    settings = Settings(redis_url=redis_url, pool="threads", concurrency=2, coalesce_ms=60_000)
    resources = WorkerResources.build(settings, watch_cancels=False, provider_env=provider_env(simulator.url))
    try:
        runner = JobRunner(resources)
        runner.run(_job("cf-warm-last"), first_delivery=True)
        with CommandLog(redis_url) as log:
            outcome = runner.run(_job("cf-last"), first_delivery=True)
        assert outcome.result is not None and outcome.result.status == "succeeded"
        assert log.scripts(6, ":events") + log.scripts(4, ":events") == 3
        client = redis.Redis.from_url(redis_url)
        events = _events(client, JobKeys("cf-last"))
        client.close()
        assert [e.type for e in events] == ["start", "delta", "delta", "usage", "done"]
        assert "".join(e.text for e in events if e.type == "delta") == outcome.result.content
    finally:
        resources.close()

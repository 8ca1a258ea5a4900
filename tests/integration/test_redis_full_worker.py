"""The issue's probe as a test: a worker whose Redis fills up loses no job and accounts every paid call.

Real parts only: a private ``redis-server`` with ``maxmemory`` and ``noeviction`` (as shipped), filled
past its limit with ballast (``tests/support/fullredis.py``: from then on every write that needs
memory is refused, as in production), the simulator, an in-process worker on that Redis.

While Redis refuses writes: jobs that had their calls answered keep their results in the worker and
their settlements in its keeper (``llmq_settles_pending``), none is acknowledged as done; jobs that
had not started go back to the queue (their claims refused) without holding a slot. When memory
frees, every job ends exactly once and the ledger equals the sum of the results' costs.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery.contrib.testing.worker import start_worker

from llmq.devstack import LocalStack
from producers import Client, RedisFullError
from producers.settings import ProducerSettings
from simulator.app import SimulatorThread
from simulator.env import provider_env
from tests.support.fullredis import FullRedis
from tests.support.spend import global_spent_usd
from tests.support.waits import until
from workers.accounting.money import Reservation, to_micros
from workers.accounting.settlekeeper import PendingSettle, SettleKeeper
from workers.contract import DEFAULT_QUEUE, TASK_NAME, TERMINAL_EVENT_TYPES, CompletionJob, JobKeys
from workers.runtime.app import close_runner, create_app
from workers.runtime.state import LLMQCelery
from workers.settings import Settings

MODEL = "openai:gpt-4o-mini"
GUARD_S = 180  # hang guard only: nothing here is timed
JOBS = 12


def _job(job_id: str) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": f"job {job_id}"}], "max_tokens": 20, "id": job_id}


@pytest.fixture
def full() -> Iterator[FullRedis]:
    with FullRedis(maxmemory_mb=32) as server:
        yield server


@pytest.fixture
def worker_app(full: FullRedis, simulator: SimulatorThread, tmp_path: Path) -> Iterator[LLMQCelery]:
    with _worker(full, simulator, tmp_path) as app:
        yield app


@contextlib.contextmanager
def _worker(full: FullRedis, simulator: SimulatorThread, tmp_path: Path) -> Iterator[LLMQCelery]:
    settings = Settings(
        redis_url=full.url,
        queue=DEFAULT_QUEUE,
        pool="threads",
        concurrency=4,
        coalesce_ms=20.0,
        claim_lease_s=10,
        visibility_timeout=4,  # a job given back while Redis is full is restored this long after
        redis_full_wait_s=0.5,
        settle_journal=str(tmp_path / "unsettled.jsonl"),
        monthly_budget_usd=100.0,
    )
    app = create_app(settings, provider_env=provider_env(simulator.url))
    with start_worker(
        app, pool="threads", concurrency=4, perform_ping_check=False, shutdown_timeout=30, without_heartbeat=True
    ):
        yield app
    close_runner(app)


def _keeper(app: LLMQCelery) -> SettleKeeper:
    keeper = app.llmq.runner().res.ledger.keeper
    assert keeper is not None
    return keeper


def test_a_full_redis_loses_no_job_and_every_paid_call_is_accounted(
    full: FullRedis, worker_app: LLMQCelery, simulator: SimulatorThread
) -> None:
    simulator.simulator.config.tokens_per_s = 10  # ~2 s per answer: calls are under way when Redis fills
    ids = [f"probe-{i}" for i in range(JOBS)]
    producer = ProducerSettings(redis_url=full.url, redis_memory_check_s=0)
    with Client(settings=producer) as client:
        for job_id in ids:
            client.submit(_job(job_id))
        until(lambda: simulator.simulator.stats.requests >= 2, "calls under way", GUARD_S)
        full.fill(0.2)  # more than the 1 MB squeeze() leaves it
        full.squeeze()

        # answered calls whose settlement Redis refused are kept by the worker, not dropped
        until(lambda: len(_keeper(worker_app).pending) >= 1, "a refused settlement kept", GUARD_S)
        until(lambda: simulator.simulator.stats.open_streams == 0, "the calls under way to end", GUARD_S)
        with pytest.raises(RedisFullError):  # producers are pushed back with the one typed error
            client.submit(_job("late"))
        assert all(not full.redis.exists(JobKeys(job_id).result) for job_id in ids)  # none acked as done

        full.free()
        results = {job_id: client.result(job_id, timeout=GUARD_S) for job_id in ids}
        assert [r.status for r in results.values()] == ["succeeded"] * JOBS
        for job_id in ids:
            events = list(client.stream(job_id, timeout=30))
            terminal = [e for e in events if e.type in TERMINAL_EVENT_TYPES]
            assert len(terminal) == 1 and events[-1] is terminal[0], (job_id, [e.type for e in events])
            seqs = [e.seq for e in events]
            assert seqs == list(range(len(events))), (job_id, seqs)  # no event lost or doubled
    until(lambda: not _keeper(worker_app).pending, "the kept settlements to be taken", GUARD_S)
    refused = worker_app.llmq.runner().res.metrics.registry.get_sample_value("llmq_settles_refused_total")
    assert refused is not None and refused >= 1
    # the ledger charges whole micro-USD per call (rounded up); each job made one call
    results_micros = sum(to_micros(r.cost_usd or 0.0) for r in results.values())
    assert results_micros > 0
    assert to_micros(global_spent_usd(full.url)) == results_micros
    # each answered call once: as many served calls as jobs (no job's call was made twice)
    assert simulator.simulator.stats.by_outcome.total() == JOBS


def test_refused_settlements_are_journaled_at_shutdown_and_settled_at_the_next_start(
    full: FullRedis, tmp_path: Path
) -> None:
    """A worker that stops while Redis still refuses writes journals what it kept; the next start
    settles it once (a second replay of the same settlement charges nothing)."""
    from workers.accounting.ledger import Ledger

    journal = tmp_path / "unsettled.jsonl"
    ledger = Ledger(full.redis)
    reservation = ledger.reserve("j-1", 1, "default", 0.01, model="gpt-4o-mini")
    keeper = SettleKeeper(ledger.settle_now, journal=journal)
    ledger.keeper = keeper
    full.fill(0.2)
    full.squeeze()
    ledger.settle(reservation, 0.004)
    assert [p.reservation.id for p in keeper.pending] == ["j-1#1"]
    assert keeper.close(timeout_s=0.5) == 1
    assert PendingSettle.from_json(journal.read_text().strip()).actual_micros == 4000
    full.free()

    again = SettleKeeper(ledger.settle_now, journal=journal)
    assert again.replay() == 1 and not again.pending and not journal.exists()
    assert global_spent_usd(full.url) == pytest.approx(0.004)
    # a settlement journaled twice (a worker killed after it settled, before it forgot it) charges once
    journal.write_text(PendingSettle(reservation, 4000).to_json() + "\n")
    assert SettleKeeper(ledger.settle_now, journal=journal).replay() == 1
    assert global_spent_usd(full.url) == pytest.approx(0.004)
    assert Reservation("x", 1, "t", "m", 0).id == "x#1"


def test_jobs_redis_is_too_full_to_start_wait_in_the_queue_holding_no_slot(
    full: FullRedis, simulator: SimulatorThread, tmp_path: Path
) -> None:
    """Jobs the worker holds when Redis fills, not started yet (sent with a countdown, so the worker
    has them in hand): their claims are refused, and each goes back to the queue without a write
    (left unacknowledged, restored once Redis takes writes): no call is made, no slot held, no job
    lost; all run once, after memory frees."""
    ids = [f"wait-{i}" for i in range(6)]
    with _worker(full, simulator, tmp_path) as app, Client(settings=ProducerSettings(redis_url=full.url)) as client:
        runner = app.llmq.runner()
        registry = runner.res.metrics.registry
        for job_id in ids:
            job = CompletionJob.model_validate(_job(job_id)).model_dump(mode="json", exclude_none=True)
            app.send_task(TASK_NAME, args=[job], task_id=job_id, queue=DEFAULT_QUEUE, countdown=2)
        until(lambda: full.redis.hlen("unacked") == len(ids), "the worker to hold every job", GUARD_S)
        full.fill(0.2)  # more than the 1 MB squeeze() leaves it
        full.squeeze()

        def given_back() -> float:
            return (
                registry.get_sample_value("llmq_redis_full_waits_total", {"stage": "job", "outcome": "gave_back"}) or 0
            )

        until(lambda: given_back() >= len(ids), "every job given back", GUARD_S)
        assert simulator.simulator.stats.requests == 0  # no call it could not account for
        assert (registry.get_sample_value("llmq_jobs_running", {"priority": "normal"}) or 0) == 0  # no slot held
        assert full.redis.hlen("unacked") == len(ids)  # every message still there: none acknowledged
        assert all(not full.redis.exists(JobKeys(job_id).result) for job_id in ids)
        full.free()
        results = [client.result(job_id, timeout=GUARD_S) for job_id in ids]
        assert [r.status for r in results] == ["succeeded"] * len(ids)
        for job_id in ids:
            terminal = [e for e in client.stream(job_id, timeout=30) if e.type in TERMINAL_EVENT_TYPES]
            assert len(terminal) == 1
        assert simulator.simulator.stats.by_outcome.total() == len(ids)


def test_a_worker_starting_while_redis_is_full_waits_for_it(full: FullRedis) -> None:
    """The worker's start writes (its queue's declaration, its presence) and Celery stops at the first
    refused one: the start check waits until Redis takes a write (here: two refused tries)."""
    from workers.runtime.redischeck import wait_until_writable

    full.fill(0.2)  # more than the 1 MB squeeze() leaves it
    full.squeeze()
    tries: list[float] = []

    def sleep(seconds: float) -> None:
        tries.append(seconds)
        if len(tries) == 2:
            full.free()

    assert wait_until_writable(full.redis, url=full.url, sleep=sleep) == 2


def test_a_reservation_redis_refuses_starts_no_call(full: FullRedis) -> None:
    """The metered model reserves before every call; Redis refusing the reservation at ``maxmemory``
    asks the run what to do (the pipeline: wait briefly, or as long as Redis is full once a call was
    paid). Told to give up, no call is made and the refusal goes up (the job then goes back to the
    queue); told Redis takes writes again, it reserves and calls."""
    from workers.accounting.ledger import Ledger, LedgerUnavailableError
    from workers.accounting.metered import Meter, MeteredModel
    from workers.accounting.prices import PriceBook
    from workers.accounting.tokens import TokenCounter
    from workers.connections.oom import refused_for_memory
    from workers.contract import RequestParams
    from workers.llm.base import ChatRequest, ChatStream, Completion
    from workers.llm.model import ChatModel, RunContext

    class Answering(ChatModel):
        def __init__(self) -> None:
            self.model_id = MODEL
            self.calls = 0

        def complete(self, request: ChatRequest) -> Completion:
            self.calls += 1
            return Completion(text="ok")

        def stream(self, request: ChatRequest) -> ChatStream:  # pragma: no cover - not used here
            raise NotImplementedError

    job = CompletionJob.model_validate(_job("reserve-1"))
    request = ChatRequest(messages=job.messages or [], params=RequestParams(max_tokens=20))
    asked: list[bool] = []
    meter = Meter(job, TokenCounter(), PriceBook(), Ledger(full.redis), RunContext())
    upstream = Answering()
    model = MeteredModel(upstream, meter)
    full.fill(0.2)
    full.squeeze()

    meter.wait_for_writes = lambda paid: asked.append(paid) or False  # give up: the job goes back
    with pytest.raises(LedgerUnavailableError) as caught:
        model.complete(request)
    assert refused_for_memory(caught.value) and upstream.calls == 0 and asked == [False]
    assert meter.ctx.calls == 0  # the refused number is not used up

    def freed(paid: bool) -> bool:  # Redis takes writes again while the run waits
        asked.append(paid)
        full.free()
        return True

    meter.wait_for_writes = freed
    assert model.complete(request).text == "ok"
    assert upstream.calls == 1 and asked == [False, False] and meter.ctx.calls == 1
    assert to_micros(global_spent_usd(full.url)) == to_micros(meter.cost_usd or 0) > 0


@pytest.mark.parametrize("pool", ["threads", "gevent"])
def test_an_llmq_worker_sigtermed_while_redis_is_full_journals_and_the_next_start_settles_once(
    full: FullRedis, simulator: SimulatorThread, tmp_path: Path, pool: str
) -> None:
    """The real program: ``llmq worker`` (SIGTERM is its cold shutdown) stopped while Redis refuses the
    settlements of calls it paid journals them, and the next worker settles each once: the ledger
    holds both runs' calls (the jobs, handed back, run again). Celery's cold shutdown sends no
    worker_shutdown, so the worker's resources were never closed and the journal never written.
    Under gevent (no event loop) the jobs the first worker left in ``unacked`` were never restored."""
    state = tmp_path / "state"
    env = {**os.environ, "LLMQ_REDIS_URL": full.url, "XDG_STATE_HOME": str(state), "LLMQ_MONTHLY_BUDGET_USD": "100",
           "LLMQ_REDIS_FULL_WAIT_S": "0.5", "LLMQ_SOFT_SHUTDOWN_TIMEOUT": "1"}  # fmt: skip
    (tmp_path / "logs").mkdir()
    stack = LocalStack(env=env, log_dir=str(tmp_path / "logs"))
    stack.redis_url, stack.simulator_url = full.url, simulator.url
    simulator.simulator.config.tokens_per_s = 10  # ~2 s per answer: calls are under way when Redis fills
    ids = [f"term-{i}" for i in range(3)]
    try:
        first = stack.start_worker(pool=pool, concurrency=4)
        with Client(settings=ProducerSettings(redis_url=full.url, redis_memory_check_s=0)) as client:
            until(client.queue_workers, "the worker to start", GUARD_S)
            for job_id in ids:
                client.submit(_job(job_id))
            until(lambda: simulator.simulator.stats.requests >= len(ids), "every call under way", GUARD_S)
            full.fill(0.2)
            full.squeeze()
            until(lambda: simulator.simulator.stats.open_streams == 0, "the paid calls to end", GUARD_S)
            until(lambda: "settlement of" in (tmp_path / "logs" / "worker1.log").read_text(), "a refusal", GUARD_S)
            first.send_signal(signal.SIGTERM)
            first.wait(GUARD_S)
            journals = list((state / "llmq").glob("unsettled-*.jsonl"))
            assert len(journals) == 1, list(state.rglob("*"))
            journaled = {PendingSettle.from_json(line).reservation.id for line in journals[0].read_text().splitlines()}
            assert journaled == {f"{job_id}#1" for job_id in ids}
            full.free()
            stack.start_worker(pool=pool, concurrency=4)
            results = {job_id: client.result(job_id, timeout=GUARD_S) for job_id in ids}
            assert [r.status for r in results.values()] == ["succeeded"] * len(ids)
            until(lambda: not list((state / "llmq").iterdir()), "the journal to be settled", GUARD_S)
        calls = simulator.simulator.stats.by_outcome.total()
        assert calls == 2 * len(ids)  # each job's first call (paid, handed back) and its second run's
        per_call = to_micros(results[ids[0]].cost_usd or 0.0)
        assert (
            to_micros(global_spent_usd(full.url))
            == sum(to_micros(r.cost_usd or 0.0) for r in results.values()) + len(ids) * per_call
        )
    finally:
        stack.stop()

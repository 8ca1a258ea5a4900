"""Scheduling end to end: a real worker (threads pool), the simulator, producers, one Redis.

The issue's measurements as tests. What is asserted is orders and counts: where a job finishes
among the others (results arrive on one reply list, in completion order), how completions split
between tenants, how many of a tenant's jobs are running at each sample. The scheduler picks
deterministically (stride scheduling), so a split is exact at the fetch and only blurred by the
worker's running window at the edges; the tolerances below are that window, not luck.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import redis
from celery.contrib.testing.worker import start_worker

from producers import Client
from simulator.app import SimulatorThread
from simulator.env import provider_env
from tests.support.waits import until
from workers.connections.schedule import queue_prefix
from workers.contract import CompletionResult, JobKeys
from workers.runtime.app import close_runner, create_app
from workers.settings import Settings

MODEL = "openai:gpt-4o-mini"
P = queue_prefix("llmq")


@contextlib.contextmanager
def worker(
    redis_url: str,
    simulator: SimulatorThread,
    tmp_path: Path,
    *,
    concurrency: int,
    config: str = "",
    transport: dict[str, Any] | None = None,
) -> Iterator[None]:
    """An in-process worker with ``config`` as its routes file (published to Redis as it starts) and
    ``transport`` over its broker transport options."""
    path = tmp_path / f"llmq-{concurrency}.toml"
    path.write_text(config)
    settings = Settings(
        redis_url=redis_url,
        pool="threads",
        concurrency=concurrency,
        coalesce_ms=20.0,
        claim_lease_s=10,
        config=str(path),
    )
    app = create_app(settings, provider_env=provider_env(simulator.url))
    app.conf.broker_transport_options = {**app.conf.broker_transport_options, **(transport or {})}
    with start_worker(
        app,
        pool="threads",
        concurrency=concurrency,
        perform_ping_check=False,
        shutdown_timeout=10,
        without_heartbeat=True,
    ):
        yield
    close_runner(app)


def _job(job_id: str, tenant: str, priority: str, reply: str, **extra: Any) -> dict[str, Any]:
    return {
        "id": job_id,
        "model": MODEL,
        "messages": [{"role": "user", "content": job_id}],
        "max_tokens": 5,
        "stream": False,
        "tenant": tenant,
        "priority": priority,
        "reply_to": reply,
        **extra,
    }


def _completions(r: redis.Redis, reply: str, count: int, guard_s: float) -> list[CompletionResult]:
    """The first ``count`` results on the reply list, in the order they were written."""
    until(lambda: r.llen(reply) >= count, f"{count} results on {reply}", guard_s)
    return [CompletionResult.model_validate_json(raw) for raw in r.lrange(reply, 0, count - 1)]


def test_an_interactive_job_runs_in_the_first_free_slot_behind_a_bulk_backlog(
    redis_url: str, redis_client: redis.Redis, simulator: SimulatorThread, client: Client, tmp_path: Path
) -> None:
    """Issue #26's measurement: 600 bulk jobs of one tenant queued first, then one interactive job of
    another, 1 s calls, 30 slots. On a FIFO queue it ended after all 600 (21.5 s). Here it is taken by
    the first fetch after its submit, so it runs in the first slot that frees (within one call) and
    ends one call later: "within 2.5 s" with 1 s calls, stated in calls rather than seconds. What that
    means in completions: behind the 30 running at its submit and at most the bulk jobs taken in that
    same fetch (all 1 s calls: a fetch that fills 30 freed slots at once starts them together), so
    among the first 60 completions after its submit, not the 571st. A slower machine stretches every
    call alike and leaves that count as it is, so it is what is asserted; the seconds are printed (the
    README has the bench's figure)."""
    simulator.simulator.config.latency = 1.0
    reply = "llmq:reply:backlog"
    with worker(redis_url, simulator, tmp_path, concurrency=30):
        for n in range(600):
            client.submit(_job(f"bulk-{n}", "bulk-tenant", "bulk", reply))
        until(lambda: redis_client.scard(f"{P}run:t:bulk-tenant") >= 30, "the first wave to run", 60)
        done_before = redis_client.llen(reply)
        submitted = time.monotonic()
        client.submit(_job("web-1", "web", "interactive", reply))
        result = client.result("web-1", timeout=120)
        waited = time.monotonic() - submitted
        assert result.status == "succeeded"
        order = [CompletionResult.model_validate_json(raw).id for raw in redis_client.lrange(reply, done_before, -1)]
        rank = order.index("web-1") + 1
        print(f"interactive job: {rank}th completion after its submit, ended {waited:.2f} s after it")
        assert rank <= 60, order[:rank]
        bulk = _completions(redis_client, reply, 601, 240)
        assert Counter(r.status for r in bulk) == {"succeeded": 601}  # the bulk jobs all end too


def test_two_tenants_weighted_3_to_1_split_completions_3_to_1(
    redis_url: str, redis_client: redis.Redis, simulator: SimulatorThread, client: Client, tmp_path: Path
) -> None:
    """1,000 jobs each, the light tenant's submitted first: while both have work, completions split
    by weight (3 : 1 within 10 %), whatever the order they were submitted in."""
    reply = "llmq:reply:split"
    for tenant in ("light", "heavy"):
        for n in range(1000):
            client.submit(_job(f"{tenant}-{n}", tenant, "normal", reply))
    config = "[tenants.heavy]\nweight = 3\n"
    with worker(redis_url, simulator, tmp_path, concurrency=16, config=config):
        first = _completions(redis_client, reply, 1200, 300)  # heavy has 900 done: both still have work
        counts = Counter(r.tenant for r in first)
        print(f"first 1200 completions: {dict(counts)}")
        assert 2.7 <= counts["heavy"] / counts["light"] <= 3.3, counts
        # every window of 200 completions splits the same way (interleaved, not in runs)
        for start in range(0, 1200, 200):
            window = Counter(r.tenant for r in first[start : start + 200])
            assert 130 <= window["heavy"] <= 170, (start, window)
        client.celery.control.purge()  # the rest need not run


def test_max_concurrency_holds_across_the_worker_and_other_tenants_use_the_remaining_slots(
    redis_url: str, redis_client: redis.Redis, simulator: SimulatorThread, client: Client, tmp_path: Path
) -> None:
    """A tenant with ``max_concurrency`` 5 and 200 queued jobs, next to another tenant's 60, on 16
    slots: the running count sampled every 50 ms never exceeds 5, and the other tenant's jobs run
    meanwhile in the remaining 11 slots. Each sample is one ``MULTI`` (a snapshot: read one key at a
    time, a job ending and another starting between two reads would count twice): the jobs in state
    ``running`` (written by the worker's claim, left at the job's end, before its slot frees) and the
    slots the schedule holds for the tenant. "Meanwhile" is asserted by completion order: the other
    tenant's 60 jobs all end before the capped tenant's 100th (11 slots against 5: they end by its
    ~30th), where waiting behind the capped tenant would put them after its 200th."""
    simulator.simulator.config.latency = 0.15
    reply = "llmq:reply:capped"
    capped = [f"capped-{n}" for n in range(200)]
    others = [f"other-{n}" for n in range(60)]
    samples: list[tuple[int, int]] = []
    stop = threading.Event()

    def sample() -> None:
        probe = redis.Redis.from_url(redis_url)
        metas = [JobKeys(j).meta for j in capped]
        while not stop.is_set():
            pipe = probe.pipeline(transaction=True)
            for key in metas:
                pipe.hget(key, "state")
            pipe.scard(f"{P}run:t:capped")
            *states, held = pipe.execute()
            samples.append((sum(s == b"running" for s in states), int(held)))
            stop.wait(0.05)
        probe.close()

    for job_id in capped:
        client.submit(_job(job_id, "capped", "normal", reply))
    for job_id in others:
        client.submit(_job(job_id, "other", "normal", reply))
    config = "[tenants.capped]\nmax_concurrency = 5\n"
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        with worker(redis_url, simulator, tmp_path, concurrency=16, config=config):
            results = _completions(redis_client, reply, len(capped) + len(others), 300)
    finally:
        stop.set()
        sampler.join(10)
    assert Counter(r.status for r in results) == {"succeeded": 260}
    running = max(c for c, _ in samples)
    print(f"{len(samples)} samples; most capped running at once {running}, slots held {max(h for _, h in samples)}")
    assert len(samples) > 20
    assert running <= 5 and max(h for _, h in samples) <= 5
    assert max(h for _, h in samples) == 5  # it did use its 5
    order = [r.tenant for r in results]
    assert [n for n, t in enumerate(order) if t == "capped"][99] > max(n for n, t in enumerate(order) if t == "other")
    assert redis_client.scard(f"{P}run:t:capped") == 0 and not redis_client.exists(f"{P}blk:capped")


def test_a_concurrency_key_runs_one_at_a_time_and_the_others_pass(
    redis_url: str, redis_client: redis.Redis, simulator: SimulatorThread, client: Client, tmp_path: Path
) -> None:
    """Jobs of one document (``concurrency_key``, default cap 1) run one after another, in their
    order; the tenant's other jobs do not wait behind them."""
    simulator.simulator.config.latency = 0.1
    reply = "llmq:reply:keys"
    doc = [f"doc-{n}" for n in range(6)]
    free = [f"free-{n}" for n in range(6)]
    with worker(redis_url, simulator, tmp_path, concurrency=8):
        for job_id in doc:
            client.submit(_job(job_id, "t", "normal", reply, concurrency_key="document-42"))
        for job_id in free:
            client.submit(_job(job_id, "t", "normal", reply))
        order = [r.id for r in _completions(redis_client, reply, 12, 120)]
    assert [j for j in order if j.startswith("doc-")] == doc  # one at a time, in order
    assert order.index("free-5") < order.index("doc-2")  # the free ones ran while the document's waited
    assert not redis_client.exists(f"{P}park:t:document-42") and redis_client.hget(f"{P}parked", "t") == b"0"


def test_a_parked_job_starts_when_its_keys_slot_frees_woken_not_swept(
    redis_url: str, redis_client: redis.Redis, simulator: SimulatorThread, client: Client, tmp_path: Path
) -> None:
    """The worker's timed sweep (the wait's timeout, 1 s as shipped) is set to 120 s here, so a job
    can start only because something woke the worker: five jobs parked behind one concurrency key
    (cap 1) each start when the one before frees the key's slot (the release rings the bell). Were
    they left to the sweep, the last would end after 5 x 120 s; the wait below is a hang guard far
    under that."""
    simulator.simulator.config.latency = 0.1
    reply = "llmq:reply:woken"
    doc = [f"woken-{n}" for n in range(6)]
    with worker(redis_url, simulator, tmp_path, concurrency=4, transport={"sweep_s": 120}):
        for job_id in doc:
            client.submit(_job(job_id, "t", "normal", reply, concurrency_key="document-7"))
        order = [r.id for r in _completions(redis_client, reply, len(doc), 100)]
    assert order == doc  # one at a time, in order, each started by the release of the one before

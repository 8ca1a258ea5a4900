"""Provider batches behind ordinary jobs, end to end: producer -> real Redis -> in-process Celery worker
(threads) -> the batcher -> the simulator's OpenAI Batch and Anthropic Message Batches APIs -> the
jobs' own ends (events, result, ledger).

The batcher is driven by the test (``[batch] batcher = false`` keeps the worker's own thread off), one
:meth:`Batcher.tick` at a time, with its clock injectable: nothing waits on a wall clock but the
bounded ``until`` guards. (The batcher thread inside real worker processes, killed mid-step, is
``test_provider_batch_crash.py``.)
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
import redis
from celery.contrib.testing.worker import start_worker

from producers import Client
from producers.batch import run_batch
from simulator.app import SimulatorThread
from simulator.env import provider_env
from tests.support.spend import global_spent_usd
from tests.support.waits import until
from workers.contract import DEFAULT_QUEUE, JobKeys
from workers.runtime.app import close_runner, create_app
from workers.runtime.batcher import Batcher, build_batcher
from workers.runtime.state import LLMQCelery
from workers.settings import Settings

CONFIG = """
[batch]
batcher = false
max_age_s = 0
poll_s = 0.05
window_s = 1000
margin_s = 100
live_margin_s = 50
lock_s = 30
"""


@pytest.fixture
def batch_app(redis_url: str, simulator: SimulatorThread, tmp_path: Path) -> Iterator[LLMQCelery]:
    httpx2.post(f"{simulator.url}/_sim/reset")
    simulator.simulator.config.batch_processing_s = 0.0
    simulator.simulator.config.batch_window_s = 86_400.0
    config = tmp_path / "llmq.toml"
    config.write_text(CONFIG)
    settings = Settings(
        redis_url=redis_url, queue=DEFAULT_QUEUE, pool="threads", concurrency=8, coalesce_ms=20.0,
        claim_lease_s=10, config=str(config),
    )  # fmt: skip
    app = create_app(settings, provider_env=provider_env(simulator.url))
    with start_worker(
        app, pool="threads", concurrency=8, perform_ping_check=False, shutdown_timeout=10, without_heartbeat=True
    ):
        yield app
    close_runner(app)


def batcher_for(app: LLMQCelery, clock: Callable[[], float] = time.time) -> Batcher:
    """The worker's own batcher (the same build as its thread's), driven by the test."""
    res = app.llmq.resources()
    assert res.batcher is None  # the test drives its own
    return build_batcher(app, res.settings, res, clock=clock)


def pump(batcher: Batcher, done: Callable[[], bool], what: str, guard_s: float = 300.0) -> None:
    """Tick the batcher until ``done()`` (a hang guard, not a timing check)."""

    def step() -> bool:
        batcher.tick()
        return done()

    until(step, what, guard_s, poll_s=0.02)


def line_state(r: redis.Redis, job_id: str) -> str | None:
    raw = r.hget(JobKeys(job_id).batch, "state")
    return raw.decode() if raw else None


def parking_over(r: redis.Redis, *job_ids: str) -> bool:
    """Each job's line waits in the lane and the run that parked it is over (its claim released): the
    line shows ``pending`` a moment before that run ends, and a batcher ending the job in that moment
    finds its claim held and re-queues it for a lease (a test pumping the batcher at once, under load)."""
    return all(line_state(r, i) == "pending" and not r.exists(JobKeys(i).claim) for i in job_ids)


def sim_batches(sim: SimulatorThread) -> dict[str, Any]:
    return dict(httpx2.get(f"{sim.url}/_sim/stats").json()["batches"])


def live_requests(sim: SimulatorThread, job_id: str | None = None) -> int:
    stats = sim.simulator.stats
    return int(stats.requests if job_id is None else stats.by_job.get(job_id, 0))


def write_file(path: Path, lines: int) -> None:
    with open(path, "w") as f:
        for i in range(lines):
            prompt = f"summarise item {i} of the nightly evaluation set in one sentence"
            if i % 2 == 0:
                body = {"model": "gpt-4o", "messages": [{"role": "user", "content": prompt}], "max_tokens": 64}
                line: dict[str, Any] = {"custom_id": f"req-{i}", "method": "POST", "url": "/v1/chat/completions"}
                line["body"] = body
            else:
                params = {
                    "model": "claude-sonnet-4-5",
                    "max_tokens": 64,
                    "messages": [{"role": "user", "content": prompt}],
                }
                line = {"custom_id": f"req-{i}", "params": params}
            f.write(json.dumps(line) + "\n")


def run_file(client: Client, source: Path, out: Path, via: str, batcher: Batcher | None, parked: int) -> Any:
    """``llmq batch`` in a thread; with a batcher, tick it once ``parked`` lines wait (one batch per model)."""
    outcome: dict[str, Any] = {}

    def target() -> None:
        outcome["summary"] = run_batch(
            source,
            out,
            window=100_000,
            client=client,
            handle_signals=False,
            via=via,
            stall_timeout_s=600,  # type: ignore[arg-type]
        )

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    if batcher is not None:
        store = batcher.store
        groups = ("openai:gpt-4o", "anthropic:claude-sonnet-4-5")

        def waiting() -> int:
            return sum(int(store.redis.llen(store.group_list(g))) for g in groups)

        until(lambda: waiting() == parked, f"{parked} lines parked", 300)
        pump(batcher, lambda: not thread.is_alive(), "the file's results")
    thread.join(600)
    assert not thread.is_alive()
    return outcome["summary"]


def test_a_1000_line_file_via_provider_costs_half_and_calls_nothing_live(
    batch_app: LLMQCelery, client: Client, simulator: SimulatorThread, redis_url: str, tmp_path: Path
) -> None:
    source = tmp_path / "in.jsonl"
    write_file(source, 1000)
    batcher = batcher_for(batch_app)
    live_before = live_requests(simulator)
    summary = run_file(client, source, tmp_path / "provider.jsonl", "provider", batcher, parked=1000)
    assert summary.all_succeeded and summary.submitted == 1000
    assert live_requests(simulator) == live_before  # not one live call
    stats = sim_batches(simulator)
    assert stats["openai_batches"] == 1 and stats["anthropic_batches"] == 1  # one batch per model
    assert stats["lines"] == 1000 and stats["lines_answered_twice"] == 0
    out = [json.loads(line) for line in (tmp_path / "provider.jsonl").read_text().splitlines()]
    assert sorted(o["custom_id"] for o in out) == sorted(f"req-{i}" for i in range(1000))  # each exactly once
    assert all(o["response"]["status_code"] == 200 for o in out)
    provider_usd = global_spent_usd(redis_url)

    summary = run_file(client, source, tmp_path / "queue.jsonl", "queue", None, parked=0)
    assert summary.all_succeeded
    assert live_requests(simulator) == live_before + 1000
    queue_usd = global_spent_usd(redis_url) - provider_usd
    assert provider_usd / queue_usd == pytest.approx(0.5, rel=0.01)
    assert sim_batches(simulator)["lines"] == 1000  # the queue run sent no batch


def _job(model: str, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": f"hello from {model}"}], "batch": "allow", **extra}


def _events(client: Client, job_id: str) -> list[Any]:
    return list(client.stream(job_id, timeout=30))


def cancel_all_at_provider(sim: SimulatorThread) -> None:
    """End every running batch at the simulator (as an operator's cancel would)."""
    for api, base in (("openai", "/v1/batches"), ("anthropic", "/v1/messages/batches")):
        headers = {"anthropic-version": "2023-06-01"} if api == "anthropic" else {}
        for b in httpx2.get(f"{sim.url}{base}?limit=100", headers=headers).json()["data"]:
            httpx2.post(f"{sim.url}{base}/{b['id']}/cancel", headers=headers)


def test_mixed_outcomes_each_line_ends_once_with_its_status(
    batch_app: LLMQCelery, client: Client, simulator: SimulatorThread, redis_client: redis.Redis, redis_url: str
) -> None:
    def parked(batcher: Batcher, job_ids: list[str]) -> None:  # each job's run parks it
        until(lambda: parking_over(redis_client, *job_ids), "the jobs parked", 120)

    check_mixed_outcomes(batch_app, client, simulator, redis_client, redis_url, parked)


def check_mixed_outcomes(
    batch_app: LLMQCelery,
    client: Client,
    simulator: SimulatorThread,
    redis_client: redis.Redis,
    redis_url: str,
    parked: Callable[[Batcher, list[str]], None],
) -> None:
    """Succeeded, errored (retryable and not), expired, cancelled before and after sending, pending
    when the deadline comes near: each line ends once with its status. ``parked``: until the given
    jobs' lines wait for a batch (parked by their runs, or taken by the batcher from the producer)."""
    # the batcher's clock jumps ahead once "near" is sent: its deadline, 2000 s away, is then within
    # live_margin_s (50 s) while its line is pending at the provider
    ahead = [0.0]
    batcher = batcher_for(batch_app, clock=lambda: time.time() + ahead[0])
    jobs = {
        "ok": client.submit(_job("openai:gpt-4o-mini", stream=True)),
        "refused": client.submit(_job("openai:gpt-4o-mini~400")),  # errored, not retryable
        "retryable": client.submit(_job("openai:gpt-4o-mini~503", deadline_s=5000)),  # errored, retryable
        "expired": client.submit(_job("anthropic:claude-sonnet-4-5~expire")),
        "dropped": client.submit(_job("openai:gpt-4o-mini")),  # cancelled before its batch is sent
        "discarded": client.submit(_job("anthropic:claude-sonnet-4-5")),  # cancelled once its batch is sent
    }
    ids = {name: handle.id for name, handle in jobs.items()}
    parked(batcher, list(ids.values()))
    client.cancel(ids["dropped"])
    batcher.tick()  # seal, prepare (dropping the cancelled line), upload, create: 4 batches
    assert line_state(redis_client, ids["dropped"]) == "dropped"
    assert {line_state(redis_client, i) for n, i in ids.items() if n != "dropped"} == {"sent"}
    client.cancel(ids["discarded"])
    # a line that stays pending at the provider (an hour's processing) while its deadline comes near
    simulator.simulator.config.batch_processing_s = 3600.0
    near = client.submit(_job("openai:gpt-4o", deadline_s=2000)).id
    ids["near"] = near
    parked(batcher, [near])
    batcher.tick()  # its batch is sent; the others are polled, collected, their jobs sent back
    until(lambda: line_state(redis_client, near) == "sent", "the near line sent", 60)
    ahead[0] = 1960.0
    pump(batcher, lambda: line_state(redis_client, near) == "live", "the near line sent live")
    others = [i for n, i in ids.items() if n != "near"]
    pump(batcher, lambda: all(redis_client.exists(JobKeys(i).result) for i in ids.values()), "every job's end")
    results = {name: client.result(i, timeout=30) for name, i in ids.items()}
    assert {name: r.status for name, r in results.items()} == {
        "ok": "succeeded",
        "refused": "failed",
        "retryable": "succeeded",
        "expired": "succeeded",
        "dropped": "cancelled",
        "discarded": "cancelled",
        "near": "succeeded",
    }
    live = {name: live_requests(simulator, i) for name, i in ids.items()}
    # answered by the batch: no live call; retryable/expired/near ran live, once (the 503's live call retried)
    assert live["ok"] == live["refused"] == live["dropped"] == live["discarded"] == 0
    assert live["expired"] == 1 and live["near"] == 1 and live["retryable"] in (1, 2)
    refused = results["refused"].error
    assert refused is not None and not refused.retryable
    # the discarded answer is still paid for (at the batch price), the dropped line cost nothing
    assert (results["discarded"].cost_usd or 0) > 0 and not results["dropped"].cost_usd
    assert results["ok"].cost_usd and results["ok"].model_used == "openai:gpt-4o-mini"
    for name, job_id in ids.items():  # every line ends exactly once: one start, one terminal event
        events = _events(client, job_id)
        assert [e.type for e in events].count("start") == 1, name
        terminal = [e for e in events if e.type in ("done", "error", "cancelled")]
        assert len(terminal) == 1 and events[-1] is terminal[0], name
        if name == "ok":  # a streaming job gets its answer as a delta, as a cached answer is sent
            assert "".join(e.text for e in events if e.type == "delta") == results["ok"].content
    # the near line's batch ends at the provider later: its late answer is filed, nothing runs twice
    cancel_all_at_provider(simulator)
    store = batcher.store
    pump(batcher, lambda: not store.due_batches() and not store.redis.zcard(store.active), "every batch finished")
    assert sim_batches(simulator)["lines_answered_twice"] == 0
    assert live_requests(simulator, near) == 1 and all(client.result(i, timeout=5).status for i in others)
    assert global_spent_usd(redis_url) > 0


@pytest.mark.parametrize(
    ("deadline_s", "route"),
    [(None, "batch"), (1101.0, "batch"), (1099.0, "live"), (None, "live-queue")],
)
def test_via_auto_goes_to_a_batch_only_when_the_deadline_leaves_room(
    batch_app: LLMQCelery,
    client: Client,
    simulator: SimulatorThread,
    redis_client: redis.Redis,
    deadline_s: float | None,
    route: str,
) -> None:
    """window_s 1000 + margin_s 100 = 1100 s: a deadline above it waits for a batch, below it runs live."""
    batcher = batcher_for(batch_app)
    extra: dict[str, Any] = {"batch": None if route == "live-queue" else "auto"}
    if deadline_s is not None:
        extra["deadline_s"] = deadline_s
    handle = client.submit(_job("openai:gpt-4o-mini", **extra))
    if route == "batch":
        until(lambda: parking_over(redis_client, handle.id), "the job parked", 120)
        pump(batcher, lambda: bool(redis_client.exists(JobKeys(handle.id).result)), "the job's end")
    result = handle.result(timeout=60)
    assert result.status == "succeeded"
    assert live_requests(simulator, handle.id) == (0 if route == "batch" else 1)
    assert sim_batches(simulator)["lines"] == (1 if route == "batch" else 0)
    assert (line_state(redis_client, handle.id) is None) == (route != "batch")


def test_via_auto_takes_flex_where_the_model_has_it_at_the_batch_price(
    batch_app: LLMQCelery, client: Client, simulator: SimulatorThread
) -> None:
    """An auto job too close to its deadline for a batch, on a model with service_tier flex: live, half price."""
    flex = client.submit(_job("openai:o4-mini", batch="auto", deadline_s=60, max_tokens=50)).result(timeout=60)
    full = client.submit(_job("openai:o4-mini", batch=None, max_tokens=50)).result(timeout=60)
    assert flex.status == full.status == "succeeded"
    assert flex.usage.completion_tokens == full.usage.completion_tokens
    assert flex.cost_usd is not None and full.cost_usd is not None
    assert flex.cost_usd == pytest.approx(full.cost_usd / 2, rel=0.01)
    assert sim_batches(simulator)["lines"] == 0


def test_a_batched_job_is_one_flower_task_that_ends_with_its_result(
    batch_app: LLMQCelery, client: Client, redis_client: redis.Redis, redis_url: str
) -> None:
    """Flower keys tasks by id: the parking run and the batcher's ending of the job are the same
    task (the job's id), whose last state is the ending's, with the job's status as its result."""
    from tests.support.taskevents import EventCapture

    batcher = batcher_for(batch_app)
    with EventCapture(redis_url) as capture:
        handle = client.submit(_job("anthropic:claude-sonnet-4-5"))
        until(lambda: parking_over(redis_client, handle.id), "the job parked", 120)
        pump(batcher, lambda: bool(redis_client.exists(JobKeys(handle.id).result)), "the job's end")
        assert handle.result(timeout=30).status == "succeeded"

        def succeeded() -> list[dict[str, Any]]:
            return [e for e in capture.events() if e.get("uuid") == handle.id and e["type"] == "task-succeeded"]

        def both() -> bool:
            batcher.tick()  # the ending's event is held until the parking run's surely went out
            return len(succeeded()) == 2

        until(both, "the parking run's and the ending's task-succeeded", 60)
    runs = capture.task_events({handle.id})[handle.id]
    assert runs == ["task-received", "task-started", "task-succeeded", "task-succeeded"]
    parked, ended = succeeded()
    assert "in a provider batch" in parked["result"] and "succeeded" in ended["result"]


def test_a_line_whose_deadline_came_near_while_it_waited_runs_live_unsent(
    batch_app: LLMQCelery, client: Client, simulator: SimulatorThread, redis_client: redis.Redis
) -> None:
    """Parked with time to spare, but by the time its group is sealed (the batcher's clock is 1,960 s
    ahead) the deadline is within live_margin_s (50 s): it runs live, and no batch carries it."""
    batcher = batcher_for(batch_app, clock=lambda: time.time() + 1960)
    handle = client.submit(_job("openai:gpt-4o-mini", deadline_s=2000))
    until(lambda: parking_over(redis_client, handle.id), "the job parked", 120)
    pump(batcher, lambda: bool(redis_client.exists(JobKeys(handle.id).result)), "the job's end")
    assert handle.result(timeout=30).status == "succeeded"
    assert line_state(redis_client, handle.id) == "live"
    assert live_requests(simulator, handle.id) == 1
    assert sim_batches(simulator)["openai_batches"] == 0 and sim_batches(simulator)["lines"] == 0


def test_the_workers_metrics_show_lines_waiting_and_batches_by_step(
    batch_app: LLMQCelery, client: Client, simulator: SimulatorThread, redis_client: redis.Redis
) -> None:
    registry = batch_app.llmq.resources().metrics.registry
    model = "anthropic:claude-sonnet-4-5"

    def sample(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, labels)

    batcher = batcher_for(batch_app)
    simulator.simulator.config.batch_processing_s = 3600.0
    ids = [client.submit(_job(model)).id for _ in range(3)]
    until(lambda: parking_over(redis_client, *ids), "three jobs parked", 120)
    assert sample("llmq_provider_batch_lines_waiting", model=model) == 3
    assert (sample("llmq_provider_batch_oldest_wait_seconds", model=model) or 0) >= 0
    batcher.tick()
    assert sample("llmq_provider_batch_lines_waiting", model=model) is None  # the group is gone
    assert sample("llmq_provider_batches", model=model, step="running") == 1

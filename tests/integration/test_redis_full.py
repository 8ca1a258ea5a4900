"""A Redis that fills up: producers are pushed back with one typed error, nothing half-registered.

Real parts only: a private ``redis-server`` with a small ``maxmemory`` and ``noeviction`` (as
shipped), filled with ballast to the level a test needs (``tests/support/fullredis.py``), the
simulator, an in-process worker on that Redis, the gateway over real HTTP, the CLI in-process.

* Above the high watermark (90 % of ``maxmemory``) every producer refuses new jobs with
  ``RedisFullError`` - ``Client``, ``AsyncClient``, ``llmq submit`` (one line, exit 75), the gateway
  (503, ``Retry-After``, OpenAI's error shape) - while jobs already running finish; ``llmq batch``
  pauses and resumes, every line once.
* A write Redis refuses at ``maxmemory`` (the registration, or the queued message itself) is the
  same error, never redis-py's or kombu's, and leaves nothing registered: the same id submitted
  later runs once.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import openai
import pytest
from celery.contrib.testing.worker import start_worker

from llmq.cli import EXIT_REFUSED, main
from producers import AsyncClient, Client, RedisFullError
from producers.batch import BatchProgress, run_batch
from producers.batch.progress import BatchCounters
from producers.gateway import GatewaySettings, create_gateway
from producers.gateway.feed import FeedError
from producers.gateway.server import GatewayThread
from producers.history import HistoryQuery, JobHistory
from producers.settings import ProducerSettings
from simulator.app import SimulatorThread
from simulator.env import provider_env
from tests.support.brokers import queued_count
from tests.support.fullredis import FullRedis
from tests.support.waits import until
from workers.contract import DEFAULT_QUEUE, CompletionJob, CompletionResult, ErrorInfo, JobKeys
from workers.jobs.history import HistoryWriter
from workers.runtime.app import close_runner, create_app
from workers.settings import Settings

MODEL = "openai:gpt-4o-mini"
HANG_GUARD_S = 120
TOKEN = "tok-full-3c9a1e"


def _job(job_id: str, content: str = "hello") -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": content}], "max_tokens": 20, "id": job_id}


@pytest.fixture
def full() -> Iterator[FullRedis]:
    with FullRedis(maxmemory_mb=32) as server:
        yield server


def _settings(full: FullRedis, **overrides: Any) -> ProducerSettings:
    """A producer that reads Redis's memory before every submit (the default reuses a reading for 1 s:
    a test filling Redis between two submits must not depend on how long the fill took)."""
    return ProducerSettings(redis_url=full.url, **{"redis_memory_check_s": 0, **overrides})


@pytest.fixture
def full_worker(full: FullRedis, simulator: SimulatorThread) -> Iterator[object]:
    settings = Settings(
        redis_url=full.url, queue=DEFAULT_QUEUE, pool="threads", concurrency=8, coalesce_ms=20.0, claim_lease_s=10
    )
    app = create_app(settings, provider_env=provider_env(simulator.url))
    with start_worker(
        app, pool="threads", concurrency=8, perform_ping_check=False, shutdown_timeout=10, without_heartbeat=True
    ) as w:
        yield w
    close_runner(app)


def _registered(full: FullRedis, job_id: str) -> bool:
    return bool(full.redis.exists(JobKeys(job_id).meta))


def _queued(full: FullRedis) -> int:
    return queued_count(full.redis, DEFAULT_QUEUE)


# --- the watermark ------------------------------------------------------------------------------------


def test_above_the_watermark_the_sync_client_refuses_and_registers_nothing(full: FullRedis) -> None:
    with Client(settings=_settings(full)) as client:
        assert client.submit(_job("before")).enqueued
        share = full.fill(0.93)
        with pytest.raises(RedisFullError) as caught:
            client.submit(_job("refused"))
        err = caught.value
        assert err.max_bytes == 32 * 1_048_576 and err.used_bytes is not None
        assert err.used_bytes >= 0.9 * err.max_bytes and abs(err.used_bytes / err.max_bytes - share) < 0.02
        assert err.retry_after_s is not None and err.retry_after_s > 0
        assert "above the 90% high watermark" in str(err)
        assert not _registered(full, "refused") and _queued(full) == 1

        full.free()  # memory frees: the same id goes through, once
        assert client.submit(_job("refused")).enqueued
        assert not client.submit(_job("refused")).enqueued
        assert _queued(full) == 2


def test_above_the_watermark_the_async_client_refuses_and_registers_nothing(full: FullRedis) -> None:
    async def scenario() -> None:
        async with AsyncClient(settings=_settings(full)) as client:
            assert (await client.submit(_job("before"))).enqueued
            full.fill(0.93)
            with pytest.raises(RedisFullError):
                await client.submit(_job("refused"))
            assert not _registered(full, "refused") and _queued(full) == 1
            full.free()
            assert (await client.submit(_job("refused"))).enqueued
            assert _queued(full) == 2

    asyncio.run(scenario())


def test_a_configured_watermark_moves_the_line(full: FullRedis) -> None:
    full.fill(0.6)
    with Client(settings=_settings(full, redis_high_watermark=0.5)) as strict:
        with pytest.raises(RedisFullError) as caught:
            strict.submit(_job("strict"))
        assert "above the 50% high watermark" in str(caught.value)
    with Client(settings=_settings(full)) as default:
        assert default.submit(_job("default")).enqueued


def test_one_fast_producer_does_not_run_past_the_watermark(full: FullRedis) -> None:
    """Large jobs submitted faster than the reading interval: the client counts what it stored since
    its last reading and reads again before crossing, so it stops at the watermark, not at maxmemory."""
    with Client(settings=_settings(full, redis_memory_check_s=60)) as client:
        big = "x" * 200_000
        accepted = 0
        with pytest.raises(RedisFullError):
            for i in range(1000):
                client.submit(_job(f"big-{i}", big))
                accepted += 1
    assert accepted > 10
    assert 0.85 < full.used_share() < 0.95  # stopped near the watermark; Redis still takes writes


# --- writes refused at maxmemory ----------------------------------------------------------------------


#: A submit in one step (``producers/onestep.py``: one script registers and queues) or in two (the
#: registration, then Celery's send: a RabbitMQ queue, a queue on a Redis of its own...).
ONE_STEP = pytest.mark.parametrize("one_step", [True, False], ids=["one-step", "two-step"])


def _refused_as(one_step: bool, two_step_write: str) -> str:
    """What a refused submit says it was doing: one script does both; two steps name the refused one."""
    return "refused a write (registering and queueing the job)" if one_step else f"refused a write ({two_step_write})"


@ONE_STEP
def test_a_registration_refused_at_maxmemory_is_the_typed_error(full: FullRedis, one_step: bool) -> None:
    with Client(settings=_settings(full, redis_high_watermark=0)) as client:  # no watermark: Redis refuses
        client.one_step.enabled = one_step
        full.fill_until_refused()
        with pytest.raises(RedisFullError) as caught:
            client.submit(_job("oom"))
        assert _refused_as(one_step, "registering the job") in str(caught.value)
        assert caught.value.used_bytes is not None and caught.value.used_bytes > caught.value.max_bytes  # type: ignore[operator]
        assert not _registered(full, "oom")
        full.free()
        assert client.submit(_job("oom")).enqueued
        assert _queued(full) == 1


@ONE_STEP
def test_a_queued_message_refused_at_maxmemory_unregisters_the_job(full: FullRedis, one_step: bool) -> None:
    """The registration fits, the large message does not: the typed error, and no registration left
    (two steps: kombu's OperationalError mapped and the registration undone; one step: the script
    refused whole), so the same id submitted later is sent."""
    with Client(settings=_settings(full, redis_high_watermark=0)) as client:
        client.one_step.enabled = one_step
        full.fill(0.99)
        with pytest.raises(RedisFullError) as caught:
            client.submit(_job("large", "y" * 600_000))
        assert _refused_as(one_step, "queueing the job") in str(caught.value)
        assert not _registered(full, "large") and _queued(full) == 0
        full.free()
        assert client.submit(_job("large", "y" * 600_000)).enqueued  # sent now (was refused as already registered)
        assert _queued(full) == 1 and _registered(full, "large")


@ONE_STEP
def test_the_async_client_maps_refused_writes_too(full: FullRedis, one_step: bool) -> None:
    async def scenario() -> None:
        async with AsyncClient(settings=_settings(full, redis_high_watermark=0)) as client:
            client.one_step.enabled = one_step
            full.fill(0.99)
            with pytest.raises(RedisFullError, match=re.escape(_refused_as(one_step, "queueing the job"))):
                await client.submit(_job("large", "y" * 600_000))
            full.fill_until_refused()
            with pytest.raises(RedisFullError, match=re.escape(_refused_as(one_step, "registering the job"))):
                await client.submit(_job("small"))
            assert not _registered(full, "large") and not _registered(full, "small")

    asyncio.run(scenario())


# --- the CLI and the gateway ----------------------------------------------------------------------------


def test_llmq_submit_says_it_in_one_line_and_exits_75(
    full: FullRedis, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LLMQ_REDIS_URL", full.url)
    full.fill(0.95)
    assert main(["submit", "hello", "--model", MODEL, "--no-wait", "--id", "cli-full"]) == EXIT_REFUSED == 75
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("llmq: Redis (LLMQ_REDIS_URL) is full: "), err
    assert "Traceback" not in err and not _registered(full, "cli-full")


def _dead_letters(full: FullRedis, ids: list[str]) -> None:
    """Failed jobs in today's history, their requests kept for replay (as a worker writes them)."""
    for job_id in ids:
        job = CompletionJob(id=job_id, model=MODEL, messages=[{"role": "user", "content": "hi"}])
        result = CompletionResult(id=job_id, status="failed", error=ErrorInfo(type="timeout", message="slow"))
        for write in HistoryWriter(7).writes(job, result):
            full.redis.execute_command(*write)


def test_llmq_jobs_replay_exits_75_and_records_no_copy_while_redis_is_full(
    full: FullRedis, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A replay records its copy's id before submitting it: above the watermark the refused submit
    removes the record (a dry run does not show a copy that never existed), and a record Redis
    refuses at maxmemory is the same one line and exit 75 (was exit 2 with redis-py's text); once
    Redis has room, one replay submits each dead letter once."""
    monkeypatch.setenv("LLMQ_REDIS_URL", full.url)
    monkeypatch.setenv("LLMQ_REDIS_MEMORY_CHECK_S", "0")
    _dead_letters(full, ["dead-a", "dead-b"])
    history = JobHistory(full.redis)
    full.fill(0.95)
    for squeeze in (False, True):
        if squeeze:
            full.squeeze()  # the record itself is refused
        capsys.readouterr()
        assert main(["jobs", "replay", "--json"]) == EXIT_REFUSED
        err = capsys.readouterr().err
        lines = err.splitlines()
        assert len(lines) == 1 and lines[0].startswith("llmq: Redis (LLMQ_REDIS_URL) is full: "), err
        assert ("recording the replay" in err) == squeeze, err
        assert all(e.replayed_as is None for e in history.list(HistoryQuery())), squeeze
    full.free()
    capsys.readouterr()
    assert main(["jobs", "replay", "--json"]) == 0
    outcomes = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert sorted((o["id"], o["outcome"]) for o in outcomes) == [("dead-a", "submitted"), ("dead-b", "submitted")]
    for o in outcomes:
        assert _registered(full, o["copy"])


@pytest.fixture
def full_gateway(full: FullRedis) -> Iterator[GatewayThread]:
    settings = GatewaySettings(redis_url=full.url, tokens={TOKEN: "team"})
    with GatewayThread(create_gateway(settings)) as server:
        yield server


def test_the_gateway_answers_503_with_retry_after(full: FullRedis, full_gateway: GatewayThread) -> None:
    full.fill(0.95)
    headers = {"authorization": f"Bearer {TOKEN}"}
    chat = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
    with httpx2.Client(base_url=full_gateway.url, headers=headers, timeout=30) as http:
        for path, body in (("/v1/jobs", _job("gw")), ("/v1/chat/completions", chat)):
            response = http.post(path, json=body)
            assert response.status_code == 503, response.text
            assert int(response.headers["retry-after"]) >= 1
            error = response.json()["error"]
            assert set(error) == {"message", "type", "param", "code"}
            assert error["code"] == "redis_full" and error["type"] == "server_error"
            assert "is full" in error["message"]
        metrics = http.get("/metrics").text
    assert 'llmq_gateway_submits_refused_total{code="redis_full"} 2.0' in metrics
    assert not _registered(full, "team:gw")

    sdk = openai.OpenAI(base_url=f"{full_gateway.url}/v1", api_key=TOKEN, max_retries=0, timeout=30)
    try:
        with pytest.raises(openai.InternalServerError) as caught:
            sdk.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
        assert caught.value.status_code == 503 and caught.value.response.headers["retry-after"]
    finally:
        sdk.close()


def test_a_cancel_redis_refuses_is_the_typed_error_everywhere(full: FullRedis, full_gateway: GatewayThread) -> None:
    """A cancel is a write: refused at maxmemory it is RedisFullError from Client and AsyncClient and
    a 503 with Retry-After in OpenAI's shape from the gateway (was redis-py's OutOfMemoryError, and
    the gateway's handler crashed on it: a plain-text 500); once Redis has room the same cancel works."""
    headers = {"authorization": f"Bearer {TOKEN}"}
    with (
        Client(settings=_settings(full)) as client,
        httpx2.Client(base_url=full_gateway.url, headers=headers, timeout=30) as http,
    ):
        client.submit(_job("to-cancel"))
        assert http.post("/v1/jobs", json=_job("gw-cancel")).status_code == 202
        full.fill(0.5)
        full.squeeze()
        with pytest.raises(RedisFullError) as caught:
            client.cancel("to-cancel")
        assert "cancelling the job" in str(caught.value) and caught.value.max_bytes == 1_048_576

        async def async_cancel() -> None:
            aclient = AsyncClient(settings=_settings(full))
            try:
                with pytest.raises(RedisFullError):
                    await aclient.cancel("to-cancel")
            finally:
                await aclient.aclose()

        asyncio.run(async_cancel())
        response = http.post("/v1/jobs/gw-cancel/cancel")
        assert response.status_code == 503, response.text
        assert int(response.headers["retry-after"]) >= 1
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["code"] == "redis_full"
        full.free()
        assert client.cancel("to-cancel") is True
        assert http.post("/v1/jobs/gw-cancel/cancel").status_code < 300


# --- with a worker: running jobs finish, a batch pauses and resumes -----------------------------------------


def test_at_the_watermark_running_jobs_finish_while_new_submits_are_refused(
    full: FullRedis, full_worker: object, simulator: SimulatorThread
) -> None:
    simulator.simulator.config.tokens_per_s = 20  # ~1 s per job: they are running when Redis fills
    with Client(settings=_settings(full)) as client:
        handles = [client.submit(_job(f"run-{i}")) for i in range(8)]
        until(lambda: all(full.redis.exists(JobKeys(h.id).events) for h in handles), "every job started", HANG_GUARD_S)
        full.fill(0.92)
        with pytest.raises(RedisFullError):
            client.submit(_job("late"))
        results = [h.result(timeout=HANG_GUARD_S) for h in handles]
        assert [r.status for r in results] == ["succeeded"] * 8
        assert full.used_share() < 1.0  # they had the room above the watermark
        assert not _registered(full, "late")


class _Recorder(BatchProgress):
    """The batch's progress as a test sees it: its messages, and a hook on its counters."""

    def __init__(self, on_update: Any) -> None:
        super().__init__(io.StringIO(), tty=False, enabled=False)
        self.messages: list[str] = []
        self._on_update = on_update

    def update(self, c: BatchCounters, *, force: bool = False) -> None:
        self._on_update(c)

    def message(self, text: str) -> None:
        self.messages.append(text)


def test_a_batch_pauses_at_the_watermark_and_resumes_every_line_once(
    full: FullRedis, full_worker: object, tmp_path: Path
) -> None:
    lines = 40
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps({"custom_id": f"c{i}", "prompt": f"line {i}"}) + "\n" for i in range(lines)))
    output = tmp_path / "out.jsonl"
    filled = threading.Event()

    def fill_midway(c: BatchCounters) -> None:  # runs on the batch's thread, between submits
        if c.succeeded >= 10 and not filled.is_set():
            full.fill(0.93)
            filled.set()

    progress = _Recorder(fill_midway)
    outcome: dict[str, Any] = {}
    with Client(settings=_settings(full)) as client:
        client.memory.retry_after_s = 0.2  # retry quickly once memory frees (the default is 5 s)

        def run() -> None:
            try:
                outcome["summary"] = run_batch(
                    source, output, model=MODEL, window=4, client=client, progress=progress, handle_signals=False
                )
            except BaseException as exc:  # reported by the test
                outcome["error"] = exc

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        until(lambda: any("paused at line" in m for m in progress.messages), "the batch to pause", HANG_GUARD_S)
        full.free()
        thread.join(HANG_GUARD_S)
        assert not thread.is_alive() and "error" not in outcome, outcome
    summary = outcome["summary"]
    assert summary.complete and summary.succeeded == lines and summary.pauses >= 1
    records = [json.loads(line) for line in output.read_text().splitlines()]
    assert sorted(r["custom_id"] for r in records) == sorted(f"c{i}" for i in range(lines))  # each once
    assert any("resumed at line" in m for m in progress.messages)
    paused = next(m for m in progress.messages if "paused at line" in m)
    assert "is full" in paused and 10 < int(paused.split("paused at line ")[1].split(":")[0]) < lines


def test_a_batch_stopped_while_paused_counts_that_pause(full: FullRedis, tmp_path: Path) -> None:
    """Ctrl-C while the batch is paused on a full Redis: nothing is sent, the line is left for a rerun,
    and the summary counts the time spent in that pause (it said "paused 1 time(s), 0s in all")."""
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps({"custom_id": f"c{i}", "prompt": f"line {i}"}) + "\n" for i in range(3)))
    output = tmp_path / "out.jsonl"

    class StopWhenPaused(_Recorder):
        def message(self, text: str) -> None:
            super().message(text)
            if "paused at line" in text:
                os.kill(os.getpid(), signal.SIGINT)  # the run's own Ctrl-C handler: stop after this wait

    progress = StopWhenPaused(lambda c: None)
    full.fill(0.95)
    with Client(settings=_settings(full)) as client:
        client.memory.retry_after_s = 0.2
        summary = run_batch(source, output, model=MODEL, window=4, client=client, progress=progress)
    assert summary.interrupted and summary.pauses == 1 and summary.submitted == 0
    assert summary.paused_s > 0, summary
    assert _queued(full) == 0


def test_a_chat_whose_job_no_worker_took_while_redis_is_full_keeps_waiting_for_it(full: FullRedis) -> None:
    """A full Redis refuses the workers' presence renewals too, so a waiting chat may find no live
    worker; the gateway's cancel of that job is then refused and the job will run once Redis takes
    writes: the chat keeps waiting (it answered 503 ``no_worker``, which the SDKs retry: a second job,
    paid twice). Once Redis takes writes and still no worker consumes the queue, the next check
    cancels the job and answers."""
    from producers.gateway.metrics import GatewayMetrics
    from producers.gateway.state import Gateway

    async def check() -> tuple[object, object, bool]:
        client = AsyncClient(settings=_settings(full, queue="nobody-home"))
        gateway = Gateway(GatewaySettings(redis_url=full.url, queue="nobody-home"), client, GatewayMetrics())
        try:
            await client.submit(_job("unstarted"))
            full.fill(0.5)
            full.squeeze()
            while_full = await gateway._no_worker("unstarted")
            cancelled_while_full = bool(full.redis.exists(JobKeys("unstarted").cancel))
            full.free()
            after = await gateway._no_worker("unstarted")
        finally:
            await client.aclose()
        return while_full, after, cancelled_while_full

    while_full, after, cancelled_while_full = asyncio.run(check())
    assert while_full is None and not cancelled_while_full
    assert isinstance(after, FeedError) and after.code == "no_worker" and "It was cancelled" in after.message
    assert _registered(full, "unstarted") and full.redis.exists(JobKeys("unstarted").cancel)


def test_any_llmq_command_whose_write_a_full_redis_refuses_exits_75_in_one_line(
    full: FullRedis, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Not only submits: a command whose write Redis refuses at maxmemory (a budget, a prompt) says
    Redis is full and what to do, and exits 75 like a refused submit (was exit 2, "refused the
    command ... check LLMQ_REDIS_URL"); the same command works once Redis has room."""
    monkeypatch.setenv("LLMQ_REDIS_URL", full.url)
    full.fill(0.5)
    full.squeeze()
    capsys.readouterr()
    for argv in (["budget", "set", "--monthly", "50"], ["limits", "--json"], ["cache", "stats"]):
        code = main(argv)
        lines = capsys.readouterr().err.splitlines()
        if argv[0] == "budget":  # a write: refused
            assert code == EXIT_REFUSED, (argv, lines)
            assert len(lines) == 1 and " is full: it refused a write" in lines[0] and "maxmemory" in lines[0], lines
        else:  # reads work at maxmemory
            assert code == 0, (argv, lines)
    full.free()
    assert main(["budget", "set", "--monthly", "50"]) == 0

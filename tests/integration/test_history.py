"""Job history, dead letters and replay end to end: 100 jobs with mixed outcomes through a real worker,
then ``llmq jobs`` (a subprocess) and the history reader see exactly the right sets."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import redis

from llmq.localredis import ManagedRedis
from producers import Client
from producers.history import HistoryQuery, JobHistory, parse_since
from simulator.app import SimulatorThread
from workers.contract import CompletionJob, CompletionResult, ErrorInfo, PromptKeys
from workers.contract.history import HistoryKeys, day_of
from workers.jobs.history import HistoryWriter
from workers.prompts.loader import load_library
from workers.prompts.store import PromptStore

REPO = Path(__file__).resolve().parents[2]


def llmq(client: Client, *args: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("LLMQ_")}
    environ.update(LLMQ_REDIS_URL=client.redis_url, LLMQ_BROKER_URL=client.broker_url, LLMQ_QUEUE=client.queue)
    return subprocess.run(
        [sys.executable, "-m", "llmq.cli", "jobs", *args],
        cwd=REPO,
        env=environ,
        capture_output=True,
        text=True,
        timeout=120,
    )


def lines(proc: subprocess.CompletedProcess[str]) -> list[dict]:
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]


def _job(model: str, tenant: str) -> dict[str, object]:
    return {"model": model, "tenant": tenant, "messages": [{"role": "user", "content": "secret words"}]}


def test_hundred_jobs_filtered_dead_lettered_and_replayed_once(
    worker, client: Client, simulator: SimulatorThread
) -> None:
    plan = (
        [("openai:gpt-4o-mini", "team-a", "ok")] * 30
        + [("openai:gpt-4o-mini", "team-b", "ok")] * 20
        + [("openai:gpt-4o-mini~400*", "team-a", "bad")] * 10
        + [("openai:gpt-4o-mini~400*", "team-b", "bad")] * 10
        + [("openai:gpt-4o-mini~429ms@5*", "team-a", "limited")] * 20
        + [("openai:gpt-4o-mini~slow@60", "team-b", "cancel")] * 10
    )
    ids: dict[str, set[str]] = {"ok": set(), "bad": set(), "limited": set(), "cancel": set()}
    tenant_of: dict[str, str] = {}
    for model, tenant, kind in plan:
        handle = client.submit(_job(model, tenant))
        ids[kind].add(handle.id)
        tenant_of[handle.id] = tenant
    for job_id in ids["cancel"]:
        for event in client.stream(job_id, timeout=60):
            if event.type == "start":
                break
        client.cancel(job_id)
    results = {job_id: client.result(job_id, timeout=120) for group in ids.values() for job_id in group}
    assert Counter(r.status for r in results.values()) == {"succeeded": 50, "failed": 40, "cancelled": 10}
    assert {results[i].error.type for i in ids["limited"]} == {"rate_limited"}  # type: ignore[union-attr]

    history = JobHistory(client.redis)

    def found(**filters: object) -> set[str]:
        return {e.summary.id for e in history.list(HistoryQuery(limit=1000, **filters))}  # type: ignore[arg-type]

    failed = ids["bad"] | ids["limited"]
    assert found() == set(tenant_of)
    assert found(status="failed") == failed
    assert found(status="cancelled") == ids["cancel"]
    assert found(error="rate_limited") == ids["limited"]
    assert found(tenant="team-b") == {i for i, t in tenant_of.items() if t == "team-b"}
    assert found(tenant="team-b", status="failed") == {i for i in ids["bad"] if tenant_of[i] == "team-b"}
    assert found(model="openai:gpt-4o-mini~400*") == ids["bad"]
    assert found(since=time.time() + 60) == set()
    newest = history.list(HistoryQuery(limit=7))
    assert len(newest) == 7
    assert [e.summary.finished_at for e in newest] == sorted((e.summary.finished_at for e in newest), reverse=True)
    rest = history.list(HistoryQuery(limit=1000, before=newest[-1].summary.finished_at))
    assert {e.summary.id for e in newest} | {e.summary.id for e in rest} == set(tenant_of)
    assert len(rest) == 93

    # the CLI: the same sets, no message text anywhere
    listed = lines(llmq(client, "list", "--status", "failed", "--error", "rate_limited", "--json", "--limit", "500"))
    assert {d["id"] for d in listed} == ids["limited"]
    assert all(d["error"]["type"] == "rate_limited" and d["replayable"] for d in listed)
    everything = llmq(client, "list", "--json", "--limit", "500")
    assert len(lines(everything)) == 100 and "secret words" not in everything.stdout
    shown = lines(llmq(client, "show", next(iter(ids["bad"])), "--json"))[0]
    assert shown["status"] == "failed" and shown["request"]["messages"] == 1
    assert [e["type"] for e in shown["events"]][-1] == "error"
    text = llmq(client, "show", next(iter(ids["ok"])))
    assert text.returncode == 0 and "succeeded" in text.stdout and "secret words" not in text.stdout

    # replay: a dry run submits nothing; two replays submit each failed job exactly once
    dry = lines(llmq(client, "replay", "--json", "--dry-run", "--limit", "500"))
    assert {d["id"] for d in dry} == failed and {d["outcome"] for d in dry} == {"would_submit"}
    assert found(status="failed") == failed  # nothing ran
    first = lines(llmq(client, "replay", "--json", "--limit", "500"))
    assert {d["id"] for d in first} == failed and {d["outcome"] for d in first} == {"submitted"}
    copies = {d["id"]: d["copy"] for d in first}
    assert len(set(copies.values())) == 40
    for copy in copies.values():
        client.result(copy, timeout=120)
    # the copies failed too (same faults): the same replay again sends nothing, neither the
    # originals nor copies of the failed copies
    second = llmq(client, "replay", "--json", "--limit", "500")
    again = {d["id"]: d for d in lines(second)}
    assert set(again) == failed
    assert all(again[o]["outcome"] == "already_replayed" and again[o]["copy"] == c for o, c in copies.items())
    assert "40 failed copies of earlier replays left alone" in second.stderr
    # default limit: the 40 newer failed copies do not crowd the originals out of the page
    page = {d["id"] for d in lines(llmq(client, "replay", "--json", "--limit", "10"))}
    assert len(page) == 10 and page <= failed
    # asked for, the failed copies are dead letters of their own: each replayed once
    third = lines(llmq(client, "replay", "--json", "--limit", "500", "--include-copies"))
    replayed_copies = {d["copy"] for d in third if d["id"] in copies.values()}
    assert all(d["outcome"] == "submitted" for d in third if d["id"] in copies.values())
    assert len(replayed_copies) == 40
    for copy in replayed_copies:
        client.result(copy, timeout=120)
    fourth = {
        d["id"]: d for d in lines(llmq(client, "replay", "--json", "--limit", "500", "--include-copies", "--dry-run"))
    }
    assert all(fourth[c]["outcome"] == "already_replayed" for c in copies.values())

    runs = Counter(e.summary.replay_of for e in history.list(HistoryQuery(limit=1000)) if e.summary.replay_of)
    assert runs == {**dict.fromkeys(copies, 1), **dict.fromkeys(copies.values(), 1)}
    for original, copy in copies.items():
        entry = history.get(copy)
        assert entry is not None and entry.summary.replay_of == original
        assert history.get(original).replayed_as == copy  # type: ignore[union-attr]
    # each 400 copy reached the simulator once (400 is not retried): it ran once
    for original in ids["bad"]:
        assert simulator.simulator.stats.by_job.get(copies[original], 0) == 1


def test_retention_drops_days_past_it(redis_client: redis.Redis) -> None:
    """A day's keys expire ``days`` whole days after it ended: a job indexed long enough ago is gone."""
    now = time.time()
    job = CompletionJob(model="openai:gpt-4o", messages=[{"role": "user", "content": "hi"}])
    result = CompletionResult(id=job.id, status="failed", error=ErrorInfo(type="timeout", message="slow"))
    for age_days, days in ((9, 7), (3, 7), (0, 1)):
        writer = HistoryWriter(days, clock=lambda age=age_days: now - age * 86_400)
        for write in writer.writes(job.model_copy(update={"id": f"job-{age_days}"}), result):
            redis_client.execute_command(*write)
    history = JobHistory(redis_client, days=30)
    assert {e.summary.id for e in history.list(HistoryQuery())} == {"job-3", "job-0"}
    assert not redis_client.exists(HistoryKeys(day_of(now - 9 * 86_400)).jobs)
    old = HistoryKeys(day_of(now - 3 * 86_400))
    ttl = redis_client.ttl(old.all)
    assert 0 < ttl <= 5 * 86_400  # 3 days ago + 7 days, counted from the end of that day
    assert redis_client.hexists(old.requests, "job-3")  # a failed job's request is kept for replay
    # what is kept is what the workers' retention kept: a reader configured with other days sees
    # the same (and a --since before the retention finds nothing older); 0 turns reading off
    for days in (1, 7, 366):
        reader = JobHistory(redis_client, days=days)
        assert {e.summary.id for e in reader.list(HistoryQuery())} == {"job-3", "job-0"}
        assert reader.get("job-3") is not None and reader.get("job-9") is None
    assert {e.summary.id for e in history.list(HistoryQuery(since=now - 2 * 86_400))} == {"job-0"}
    assert JobHistory(redis_client, days=0).list(HistoryQuery()) == []


def test_history_across_midnight_utc_and_since_boundaries(redis_client: redis.Redis) -> None:
    """Two jobs one second apart across 00:00 UTC land in two days; lists, ``since`` (inclusive)
    and paging treat them as one timeline, and ``--since 2h`` parses against the reader's clock."""
    midnight = 1_796_601_600.0  # 2026-12-07 00:00:00 UTC
    assert day_of(midnight - 0.5) != day_of(midnight + 0.5)
    job = CompletionJob(model="openai:gpt-4o", messages=[{"role": "user", "content": "hi"}])
    result = CompletionResult(id=job.id, status="failed", error=ErrorInfo(type="timeout", message="slow"))
    for name, at in (("before-midnight", midnight - 0.5), ("after-midnight", midnight + 0.5)):
        for write in HistoryWriter(7, clock=lambda at=at: at).writes(job.model_copy(update={"id": name}), result):
            redis_client.execute_command(*write)
    now = midnight + 1800
    history = JobHistory(redis_client, clock=lambda: now)

    def ids(**query: object) -> list[str]:
        return [e.summary.id for e in history.list(HistoryQuery(**query))]  # type: ignore[arg-type]

    assert ids() == ["after-midnight", "before-midnight"]
    assert ids(since=parse_since("2h", now)) == ["after-midnight", "before-midnight"]
    assert ids(since=parse_since("30m", now)) == ["after-midnight"]  # 00:00:00 exactly: not the one before
    assert ids(since=midnight - 0.5) == ["after-midnight", "before-midnight"]  # since is inclusive
    assert ids(since=parse_since("2026-12-07", now)) == ["after-midnight"]  # an ISO date: 00:00 UTC
    assert ids(status="failed", error="timeout", limit=1) == ["after-midnight"]
    assert ids(limit=1, before=midnight + 0.5) == ["before-midnight"]  # the next page crosses the day
    entries = {e.summary.id: e.day for e in history.list(HistoryQuery())}
    assert entries == {"after-midnight": "2026-12-07", "before-midnight": "2026-12-06"}
    assert history.get("before-midnight") is not None and history.get("after-midnight") is not None


def test_a_replay_whose_prompt_version_is_gone_is_refused_and_can_be_tried_again(
    worker, client: Client, redis_client: redis.Redis
) -> None:
    """A dead letter rendered from a published prompt keeps the version it named; when that version
    no longer exists the replay is refused with the reason (exit 1), nothing is sent or recorded,
    and once it exists again the same replay submits its one copy."""
    store = PromptStore(redis_client)
    summarize = next(v for v in load_library(REPO / "prompts") if v.name == "summarize" and v.version == 2)
    store.publish(summarize)
    variables = {"text": "secret words", "audience": "engineers", "bullets": 3}
    job_id = client.submit(
        {"model": "openai:gpt-4o-mini~400", "prompt": {"name": "summarize", "version": 2, "variables": variables}}
    ).id
    assert client.result(job_id, timeout=60).status == "failed"
    redis_client.hdel(PromptKeys("summarize").versions, "2")

    refused = llmq(client, "replay", "--json", "--model", "openai:gpt-4o-mini~400")
    assert refused.returncode == 1
    (outcome,) = [json.loads(line) for line in refused.stdout.splitlines()]
    assert outcome["id"] == job_id and outcome["outcome"] == "refused" and outcome["copy"] is None
    assert "no published version 2" in outcome["detail"]
    entry = JobHistory(redis_client).get(job_id)
    assert entry is not None and entry.replayed_as is None  # nothing recorded: a later replay may try

    store.publish(summarize)
    (again,) = lines(llmq(client, "replay", "--json", "--model", "openai:gpt-4o-mini~400"))
    assert again["outcome"] == "submitted"
    copy = client.result(again["copy"], timeout=60)
    assert copy.status == "failed" and copy.prompt is not None and copy.prompt.version == 2


def _exists_calls(r: redis.Redis) -> int:
    return int(r.info("commandstats").get("cmdstat_exists", {}).get("calls", 0))


def test_a_reader_asks_which_older_days_hold_history_once_a_minute() -> None:
    """Which days hold history is one EXISTS per day of the longest retention (367); the gateway reads
    the history at every status poll. A reader remembers the days before yesterday for a minute of its
    clock (they only expire; only today and yesterday can gain history) and asks the two recent ones.
    A Redis of its own: the counts are the server's, and nothing else may call EXISTS meanwhile."""
    with ManagedRedis() as server:
        _count_days_asked(redis.Redis(port=server.port))


def _count_days_asked(redis_client: redis.Redis) -> None:
    now = time.time()
    job = CompletionJob(model="openai:gpt-4o", messages=[{"role": "user", "content": "hi"}])
    result = CompletionResult(id=job.id, status="failed", error=ErrorInfo(type="timeout", message="slow"))

    def write(name: str, age_days: int) -> None:
        for w in HistoryWriter(7, clock=lambda: now - age_days * 86_400).writes(
            job.model_copy(update={"id": name}), result
        ):
            redis_client.execute_command(*w)

    write("old", 3)
    clock = [now]
    history = JobHistory(redis_client, clock=lambda: clock[0])
    before = _exists_calls(redis_client)
    assert history.get("old") is not None
    first = _exists_calls(redis_client) - before
    assert first == 367  # today, yesterday and 365 days before: every day asked once
    for _ in range(3):
        assert history.get("old") is not None and history.get("nothing") is None
    assert _exists_calls(redis_client) - before - first == 6 * 2  # six reads, today and yesterday each
    write("today", 0)
    write("yesterday", 1)
    assert [e.summary.id for e in history.list(HistoryQuery())] == ["today", "yesterday", "old"]
    clock[0] = now + 61  # a minute later: asked again in full
    mark = _exists_calls(redis_client)
    assert history.get("old") is not None
    assert _exists_calls(redis_client) - mark == 367

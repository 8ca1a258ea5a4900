"""Batch runs against real Redis and a real worker, with the simulator injecting faults."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import redis

from producers import Client
from producers.batch import batch_id_for, job_id_for, run_batch
from simulator.app import SimulatorThread
from workers.contract import JobKeys

#: (format, fault plan, expected HTTP status, expected error type); plans are per line, not random
NON_RETRYABLE = {
    0: [("~401*", 401, "authentication_error"), ("~quota*", 429, "insufficient_quota"), ("~400*", 400, "bad_request")],
    1: [("~401*", 401, "authentication_error"), ("~400*", 400, "bad_request")],
    2: [("~context*", 400, "context_length_exceeded")],
}


def mixed_line(i: int, plan: str = "") -> dict[str, Any]:
    """Line ``i``: OpenAI Batch, Anthropic or plain, by ``i % 3``."""
    prompt = f"question number {i}"
    if i % 3 == 0:
        body = {"model": f"gpt-4o-mini{plan}", "messages": [{"role": "user", "content": prompt}], "max_tokens": 32}
        return {"custom_id": f"req-{i}", "method": "POST", "url": "/v1/chat/completions", "body": body}
    if i % 3 == 1:
        params = {
            "model": f"claude-3-5-haiku{plan}",
            "max_tokens": 32,
            "messages": [{"role": "user", "content": prompt}],
        }
        return {"custom_id": f"req-{i}", "params": params}
    line: dict[str, Any] = {"custom_id": f"req-{i}", "prompt": prompt, "system": "be brief"}
    if plan:
        line["model"] = f"openai:gpt-4o-mini{plan}"
    return line


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    text = path.read_text()
    assert not text or text.endswith("\n"), "a torn last line"
    return [json.loads(line) for line in text.splitlines()]


def llmq(redis_url: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "LLMQ_REDIS_URL": redis_url}
    argv = [sys.executable, "-m", "llmq.cli", *args]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_mixed_2000_lines_each_custom_id_once_and_statuses_match_injected_faults(
    worker: object, client: Client, simulator: SimulatorThread, tmp_path: Path
) -> None:
    # retryable faults at random (seeded): the worker's retries must absorb them
    simulator.simulator.planner.rates = {"503": 0.02}
    expected_failures: dict[str, tuple[int, str]] = {}
    retried_by_plan: set[str] = set()
    source = tmp_path / "in.jsonl"
    with open(source, "w") as f:
        for i in range(2000):
            plan = ""
            if i % 23 == 5:
                choices = NON_RETRYABLE[i % 3]
                plan, status, error_type = choices[(i // 23) % len(choices)]
                expected_failures[f"req-{i}"] = (status, error_type)
            elif i % 41 == 7 and i % 3 == 0:
                plan = "~503,ok"  # one scripted retry, then success
                retried_by_plan.add(f"req-{i}")
            f.write(json.dumps(mixed_line(i, plan)) + "\n")
    out, err = tmp_path / "out.jsonl", tmp_path / "err.jsonl"

    summary = run_batch(
        source, out, errors_path=err, model="openai:gpt-4o-mini", window=64, client=client, stall_timeout_s=120
    )

    assert summary.complete and summary.lines == summary.valid == summary.submitted == 2000
    # never more than the window in flight (whether the window fills up depends on how fast the
    # worker drains it against the producer, so only the bound is asserted here)
    assert 1 <= summary.max_in_flight <= 64
    ok, failed = read_jsonl(out), read_jsonl(err)
    ids = Counter(r["custom_id"] for r in ok + failed)
    assert len(ids) == 2000 and set(ids.values()) == {1}
    assert {r["custom_id"] for r in failed} == set(expected_failures)
    assert (summary.succeeded, summary.failed) == (2000 - len(expected_failures), len(expected_failures))
    for record in failed:
        status, error_type = expected_failures[record["custom_id"]]
        assert record["response"]["status_code"] == status and record["error"] is None
        assert record["response"]["body"]["error"]["code"]
        assert record["x_llmqueue"]["error"]["type"] == error_type
        assert len(record["x_llmqueue"]["attempts"]) == 1  # non-retryable: never retried
    for record in ok:
        body = record["response"]["body"]
        assert record["response"]["status_code"] == 200 and record["error"] is None
        assert body["object"] == "chat.completion" and body["choices"][0]["message"]["content"]
        assert body["usage"]["completion_tokens"] == 20
        assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + 20
        extra = record["x_llmqueue"]
        assert extra["job_id"] == record["response"]["request_id"] and extra["attempts"][-1]["status"] == "succeeded"
        assert extra["model_used"].startswith(("openai:", "anthropic:"))
    retried = {r["custom_id"] for r in ok if len(r["x_llmqueue"]["attempts"]) > 1}
    assert retried_by_plan <= retried
    stats = simulator.simulator.stats
    assert stats.by_fault["503"] > len(retried_by_plan)  # random 503s happened and were retried away
    assert len(retried) > len(retried_by_plan)
    assert summary.prompt_tokens == sum(r["response"]["body"]["usage"]["prompt_tokens"] for r in ok)


def test_malformed_lines_are_reported_with_line_numbers_and_nothing_is_enqueued(
    redis_client: redis.Redis, redis_url: str, tmp_path: Path
) -> None:
    good = mixed_line(0)
    lines = [
        json.dumps({**good, "custom_id": "a"}),  # 1
        '{"custom_id": "b", "prompt": ',  # 2: bad JSON
        "",  # 3: blank lines are skipped (and still counted)
        json.dumps({"prompt": "no id"}),  # 4: missing custom_id
        json.dumps({**good, "custom_id": "c", "url": "/v1/embeddings"}),  # 5: wrong url
        json.dumps(mixed_line(1)),  # 6
        json.dumps({"custom_id": "a", "prompt": "again"}),  # 7: duplicate id
    ]
    source = tmp_path / "in.jsonl"
    source.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out.jsonl"

    done = llmq(redis_url, "batch", str(source), "-o", str(out), "--model", "openai:gpt-4o-mini")

    assert done.returncode == 2, done.stderr
    assert "4 invalid line(s), nothing was enqueued" in done.stderr
    # the file's line and the column within it (the end of the cut-off line), once: not json's own
    # "line 2 column 1" after it
    assert f"line 2, column {len(lines[1]) + 1}: not valid JSON: Expecting value\n" in done.stderr
    assert "line 4, custom_id: custom_id is required" in done.stderr
    assert "line 5, url: url must be '/v1/chat/completions', not '/v1/embeddings'" in done.stderr
    assert "line 7, custom_id: duplicate custom_id 'a' (first on line 1)" in done.stderr
    assert redis_client.dbsize() == 0  # not a single job or key
    assert not out.exists() and not (tmp_path / "out.errors.jsonl").exists()


def test_skip_invalid_writes_invalid_lines_to_the_errors_file_once(
    worker: object, redis_url: str, tmp_path: Path
) -> None:
    lines = [json.dumps(mixed_line(i)) for i in range(6)]
    lines[2] = "{broken"
    lines[4] = json.dumps({**mixed_line(3), "custom_id": "req-4", "method": "PUT"})
    source, out, err = tmp_path / "in.jsonl", tmp_path / "out.jsonl", tmp_path / "err.jsonl"
    source.write_text("\n".join(lines) + "\n")
    args = (
        "batch",
        str(source),
        "-o",
        str(out),
        "--errors",
        str(err),
        "--skip-invalid",
        "--model",
        "openai:gpt-4o-mini",
    )

    first = llmq(redis_url, *args)

    assert first.returncode == 1, first.stderr  # some lines did not succeed
    assert "4 succeeded, 0 failed, 2 invalid" in first.stderr
    assert sorted(r["custom_id"] for r in read_jsonl(out)) == ["req-0", "req-1", "req-3", "req-5"]
    invalid = read_jsonl(err)
    assert [(r["error"]["line"], r["error"]["code"], r["error"]["param"]) for r in invalid] == [
        (3, "invalid_json", None),
        (5, "invalid_method", "method"),
    ]
    assert invalid[1]["custom_id"] == "req-4" and invalid[1]["response"] is None

    again = llmq(redis_url, *args)  # a rerun adds nothing: results by custom_id, invalid lines by number
    assert again.returncode == 1 and "0 succeeded, 0 failed, 2 invalid, 4 already done earlier" in again.stderr
    assert len(read_jsonl(out)) == 4 and len(read_jsonl(err)) == 2


def test_a_result_delivered_twice_is_written_once(worker: object, client: Client, tmp_path: Path) -> None:
    """A job re-run after a worker restart notifies the reply list again: simulate that by copying
    every notification as it arrives (and a few for lines the run has not reached yet)."""
    source, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    source.write_text("".join(json.dumps(mixed_line(i)) + "\n" for i in range(300)))
    stop = threading.Event()
    copier = redis.Redis.from_url(client.redis_url)
    copied = Counter[str]()

    def duplicate_notifications() -> None:
        seen: set[bytes] = set()
        while not stop.is_set():
            for raw in copier.lrange(reply_list, 0, -1):
                if raw not in seen:
                    seen.add(raw)
                    copier.rpush(reply_list, raw, raw)
                    copied[json.loads(raw)["id"]] += 1
            stop.wait(0.002)

    reply_list = f"llmq:reply:batch-{batch_id_for(source, out)}"
    thread = threading.Thread(target=duplicate_notifications, daemon=True)
    thread.start()
    try:
        summary = run_batch(source, out, model="openai:gpt-4o-mini", window=16, client=client, stall_timeout_s=60)
    finally:
        stop.set()
        thread.join(5)
        copier.close()
    assert summary.complete and summary.succeeded == 300
    ids = Counter(r["custom_id"] for r in read_jsonl(out))
    assert len(ids) == 300 and set(ids.values()) == {1}
    assert len(copied) > 50  # the copier really raced the run


def test_jobs_of_an_earlier_run_are_picked_up_not_run_again(
    worker: object, client: Client, simulator: SimulatorThread, redis_client: redis.Redis, tmp_path: Path
) -> None:
    source, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    source.write_text("".join(json.dumps(mixed_line(i)) + "\n" for i in range(20)))
    batch = batch_id_for(source, out)
    # a run killed between registering a job id and sending its message left these behind
    for i in (3, 4):
        meta = JobKeys(job_id_for(batch, f"req-{i}")).meta
        redis_client.hset(meta, mapping={"state": "queued", "tenant": "default", "submitted_at": time.time()})

    first = run_batch(source, out, model="openai:gpt-4o-mini", client=client, stall_timeout_s=60)

    assert first.complete and first.succeeded == 20 and (first.reused, first.resent) == (2, 2)
    # the output is lost, the results are still in the job store: nothing is sent to a provider again
    out.unlink()
    second = run_batch(source, out, model="openai:gpt-4o-mini", client=client, stall_timeout_s=60)
    assert second.complete and second.succeeded == 20 and (second.reused, second.resent) == (20, 0)
    by_job = simulator.simulator.stats.by_job
    assert [by_job[job_id_for(batch, f"req-{i}")] for i in range(20)] == [1] * 20
    assert len(read_jsonl(out)) == 20


def test_a_rerun_exits_nonzero_while_a_line_has_no_successful_result(
    worker: object, redis_url: str, tmp_path: Path
) -> None:
    lines = [mixed_line(2), mixed_line(5, plan="~400*"), mixed_line(8)]  # plain lines; the second fails
    source, out, err = tmp_path / "in.jsonl", tmp_path / "out.jsonl", tmp_path / "err.jsonl"
    source.write_text("".join(json.dumps(line) + "\n" for line in lines))
    args = ("batch", str(source), "-o", str(out), "--errors", str(err), "--model", "openai:gpt-4o-mini")

    first = llmq(redis_url, *args)
    assert first.returncode == 1, first.stderr
    assert "2 succeeded, 1 failed" in first.stderr

    again = llmq(redis_url, *args)  # nothing left to run, and still one line without a result
    assert again.returncode == 1, again.stderr
    assert "0 succeeded, 0 failed, 0 invalid, 3 already done earlier" in again.stderr
    assert "1 line(s) failed in an earlier run" in again.stderr

    assert "rerun with a new --batch-id" in again.stderr
    # what it says to do: the failed line's record out of the errors file, a new batch id (new job ids)
    err.write_text("")
    source.write_text("".join(json.dumps(line) + "\n" for line in [mixed_line(2), mixed_line(5), mixed_line(8)]))
    last = llmq(redis_url, *args, "--batch-id", "retry-1")
    assert last.returncode == 0, last.stderr
    assert "1 succeeded, 0 failed, 0 invalid, 2 already done earlier" in last.stderr

"""``llmq subscribe`` never hangs on what cannot come: an unknown job, a seq past the end, a closed pipe.

Real ``llmq`` subprocesses against the test Redis, an in-process worker and the simulator.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from producers import Client
from simulator.app import SimulatorThread
from tests.support.waits import until

JOB = {"model": "openai:gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}]}


def _llmq(redis_url: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "LLMQ_REDIS_URL": redis_url}
    argv = [sys.executable, "-m", "llmq.cli", *args]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout)


def test_an_unknown_job_is_one_line_and_exit_4(redis_url: str) -> None:
    out = _llmq(redis_url, "subscribe", "no-such-job")
    assert out.returncode == 4, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "no job 'no-such-job'" in lines[0] and "never submitted" in lines[0], out.stderr
    assert "'<tenant>:<id>'" in lines[0]  # how the gateway stores an id of the caller's


def test_a_seq_past_the_end_of_a_finished_job_returns_at_once(worker: object, client: Client, redis_url: str) -> None:
    handle = client.submit(JOB)
    events = list(handle.stream(timeout=60))
    last = events[-1].seq

    past = _llmq(redis_url, "subscribe", handle.id, "--from-seq", str(last + 20))  # no --timeout: must not wait
    assert past.returncode == 0 and past.stdout == "", past.stderr
    assert f"job {handle.id} succeeded before seq {last + 20}" in past.stderr

    tail = _llmq(redis_url, "subscribe", handle.id, "--from-seq", str(last), "--json")
    assert tail.returncode == 0, tail.stderr
    assert [json.loads(line)["seq"] for line in tail.stdout.splitlines()] == [last]

    # the client itself: an empty stream, at once, for a seq past the end
    assert list(client.stream(handle.id, from_seq=last + 1)) == []


def test_a_closed_pipe_ends_it_quietly(
    worker: object, client: Client, simulator: SimulatorThread, redis_url: str
) -> None:
    simulator.simulator.config.tokens_per_s = 20  # a stream that goes on while the reader leaves
    simulator.simulator.config.completion_tokens = 400
    handle = client.submit({**JOB, "id": "long-stream-1"})
    until(lambda: client.redis.exists(f"llmq:job:{{{handle.id}}}:events") == 1, "the job to start", 60)
    env = {**os.environ, "LLMQ_REDIS_URL": redis_url}
    proc = subprocess.Popen(
        [sys.executable, "-m", "llmq.cli", "subscribe", "--json", handle.id],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    first = proc.stdout.readline()  # what `| head -n 1` reads, then it exits
    assert json.loads(first)["seq"] == 0
    proc.stdout.close()
    assert proc.wait(60) == 141  # 128 + SIGPIPE, as a Unix tool ends
    errors = proc.stderr.read()
    proc.stderr.close()
    assert b"Traceback" not in errors and b"BrokenPipe" not in errors, errors
    client.cancel(handle.id)


def _two_runs_and_a_repair(client: Client, job_id: str) -> None:
    """A job's stream as the worker writes it (its publisher's script, real Redis) when its first run's
    worker died mid-answer and the second run's answer was repaired once."""
    from workers.contract import CompletionResult, DoneEvent, JobKeys, StartEvent
    from workers.contract.events import RepairEvent
    from workers.jobs.events import EventPublisher, last_seq

    keys = JobKeys(job_id)
    first = EventPublisher(client.redis, keys, run=1, start_seq=-1, coalesce_s=0)
    first.emit(StartEvent(job_id=job_id, seq=0, model="openai:gpt-4o-mini"))
    for text in ("Once ", "upon"):
        first.delta(text)
    second = EventPublisher(client.redis, keys, run=2, start_seq=last_seq(client.redis, keys), coalesce_s=0)
    second.emit(StartEvent(job_id=job_id, seq=0, model="openai:gpt-4o-mini"))
    second.delta("{bad")
    second.emit(RepairEvent(job_id=job_id, seq=0, attempt=1, errors=["not JSON"]))
    second.delta('{"ok": true}')
    second.emit(DoneEvent(job_id=job_id, seq=0, result=CompletionResult(id=job_id, status="succeeded")))


def test_an_answer_that_starts_over_starts_a_new_line_and_says_why(client: Client, redis_url: str) -> None:
    """A job that moved to another worker (run 2) answers from the start, and a repair discards the
    text before it: the text is not run together ("uponOnce"), each restart is said on stderr."""
    _two_runs_and_a_repair(client, "restarted-1")
    out = _llmq(redis_url, "subscribe", "restarted-1")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["Once upon", "{bad", '{"ok": true}'], out.stdout
    notes = [line for line in out.stderr.splitlines() if "starts over" in line]
    assert len(notes) == 2, out.stderr
    assert "run 2" in notes[0] and "worker was lost" in notes[0]
    assert "response format" in notes[1]
    # the events themselves are all there for a program (--json), and the exit status is the job's
    raw = _llmq(redis_url, "subscribe", "restarted-1", "--json")
    assert raw.returncode == 0 and raw.stderr == "", raw.stderr
    assert [json.loads(line)["run"] for line in raw.stdout.splitlines()] == [1, 1, 1, 2, 2, 2, 2, 2]

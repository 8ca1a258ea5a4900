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

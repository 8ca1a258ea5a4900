"""``llmq jobs cancel``: an operator stops queued and running jobs from the shell.

Real ``llmq`` subprocesses against the test Redis, an in-process worker and the paced simulator.
"""

from __future__ import annotations

import os
import subprocess
import sys

from producers import Client
from simulator.app import SimulatorThread
from tests.support.waits import until

JOB = {"model": "openai:gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}]}


def _llmq(redis_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "LLMQ_REDIS_URL": redis_url}
    return subprocess.run(
        [sys.executable, "-m", "llmq.cli", *args], env=env, capture_output=True, text=True, timeout=120
    )


def test_cancel_says_what_each_job_was_and_how_it_ended(
    worker: object, client: Client, simulator: SimulatorThread, redis_url: str
) -> None:
    done = client.submit({**JOB, "id": "cancel-done"})
    assert done.result(timeout=60).status == "succeeded"
    simulator.simulator.config.tokens_per_s = 5  # a stream that lasts while it is cancelled
    simulator.simulator.config.completion_tokens = 400
    running = client.submit({**JOB, "id": "cancel-running"})
    until(lambda: (client.status(running.id) or {}).get("state") == "running", "the job to run", 60)
    with Client(redis_url, queue="nobody-home") as elsewhere:
        queued = elsewhere.submit({**JOB, "id": "cancel-queued"})  # on a queue no worker takes
    out = _llmq(redis_url, "jobs", "cancel", running.id, done.id, "no-such-job", "--wait", "60")
    assert out.returncode == 4, out.stderr  # one id named no job
    lines = out.stdout.splitlines()
    assert lines == [
        "cancel-running: cancelled (it was running)",
        "cancel-done: already ended (succeeded); nothing to cancel",
    ]
    assert "no job 'no-such-job'" in out.stderr
    # without --wait: said at once; the queued job ends cancelled when a worker takes it (it never runs)
    out = _llmq(redis_url, "jobs", "cancel", queued.id)
    assert out.returncode == 0 and out.stdout.splitlines() == ["cancel-queued: cancel requested (it was queued)"]
    assert client.result(running.id, timeout=5).status == "cancelled"

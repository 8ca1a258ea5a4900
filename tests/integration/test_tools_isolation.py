"""CPU-bound tool handlers under a real ``llmq worker -P gevent``: stopped at their timeout.

Under gevent a call runs in a greenlet by default, and a handler that never yields holds the whole
worker: its timeout cannot fire. ``isolation="thread"`` runs it on an OS thread (the job goes on at
the timeout, the worker stays responsive, the handler spins on until it returns) and
``isolation="process"`` in a child process, killed at the timeout. The spinning handlers
(``tests/support/tools.py``) loop without yielding until the test drops a ``release`` file.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from llmq.devstack import LocalStack
from llmq.localredis import ManagedRedis
from producers import Client
from tests.support.tools import SPIN_DIR_ENV
from tests.support.waits import until

pytestmark = pytest.mark.slow

ROOT = str(Path(__file__).parents[2])
PROMPT = [{"role": "user", "content": "spin"}]
GUARD_S = 180


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    stat = Path(f"/proc/{pid}/stat")  # a zombie (not reaped yet) is gone too
    return stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] == "Z"


def test_cpu_bound_tools_under_gevent_end_at_their_timeout(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMQ_")}
    with ManagedRedis() as server:
        env |= {
            "LLMQ_REDIS_URL": server.url,
            "PYTHONPATH": ROOT,
            "LLMQ_TOOLS": "tests.support.tools",
            SPIN_DIR_ENV: str(tmp_path),
        }
        with LocalStack(env=env) as stack, Client(server.url) as client:
            stack.start_redis()
            stack.start_simulator()
            stack.start_worker(pool="gevent", concurrency=4, name="green")
            stack.wait_for_workers(1)
            try:
                # an OS thread: the job ends at the 2 s timeout while its handler still spins
                job = {"model": "openai:gpt-4o-mini~tools", "messages": PROMPT, "tools": ["spin_thread"]}
                result = client.submit(job).result(timeout=GUARD_S)
                assert result.status == "succeeded", result.error
                assert "timed out after 2 s" in result.content
                assert (tmp_path / "thread.pid").exists() and not (tmp_path / "thread.done").exists()
                # the worker is not held by the spinning thread: another job runs meanwhile
                plain = client.submit({"model": "openai:gpt-4o-mini", "messages": PROMPT}).result(timeout=GUARD_S)
                assert plain.status == "succeeded"

                # a process: killed at the timeout
                job = {"model": "openai:gpt-4o-mini~tools", "messages": PROMPT, "tools": ["spin_process"]}
                result = client.submit(job).result(timeout=GUARD_S)
                assert result.status == "succeeded", result.error
                assert "timed out after 2 s" in result.content
                pid_file = tmp_path / "process.pid"
                if pid_file.exists():  # it got as far as spinning before its timeout (a loaded machine may not)
                    until(lambda: _gone(int(pid_file.read_text())), "the spinning process to be killed", GUARD_S)
                assert not (tmp_path / "process.done").exists()
            finally:
                (tmp_path / "release").write_text("")
            until((tmp_path / "thread.done").exists, "the thread to end once released", GUARD_S)

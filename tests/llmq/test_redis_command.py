"""``llmq redis``: the quick start's Redis for a machine without one, in the foreground, gone after."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from llmq.localredis import free_port, ping


def _children_running(port: int) -> list[str]:
    out = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True).stdout
    return [line for line in out.splitlines() if "redis-server" in line and f"--port {port}" in line]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_llmq_redis_serves_until_signalled_then_leaves_nothing(signum: int) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "llmq.cli", "redis", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ},
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # said once it answers
        assert f"Redis listening at redis://127.0.0.1:{port}/0" in line and "Ctrl-C stops it" in line, line
        assert ping(f"redis://127.0.0.1:{port}/0", 2.0)
        again = subprocess.run(
            [sys.executable, "-m", "llmq.cli", "redis", "--port", str(port)], capture_output=True, text=True, timeout=60
        )
        assert again.returncode == 0 and "already answers" in again.stderr  # a Redis there is left alone
        proc.send_signal(signum)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert not ping(f"redis://127.0.0.1:{port}/0", 0.5) and _children_running(port) == []

"""Not a test of its own (the suite does not collect it): ``tests/llmq/test_reaper.py`` runs it under
``./dev test`` to have a test run that holds what test runs start — a Redis server, a simulator and a
gevent worker subprocess, each in a session of its own — until that run is stopped by a signal."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from llmq.devstack import LocalStack


def test_holds_a_stack_until_stopped(redis_url: str) -> None:
    with LocalStack() as stack:  # (this run's environment: no LLMQ_REDIS_URL, so a Redis of its own)
        stack.start_redis()
        stack.start_simulator()
        stack.start_worker(pool="gevent", concurrency=2)
        stack.wait_for_workers(1)
        Path(os.environ["LLMQ_HOLDER_READY"]).write_text("ready")
        threading.Event().wait()  # until the run is stopped: its clean-up (or the reaper's) is under test

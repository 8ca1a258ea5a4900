"""A gevent worker whose Redis is gone still stops on SIGTERM, within its soft-shutdown window.

Before: Celery's worker heartbeat retried its publish to the lost broker forever, holding the event
dispatcher's lock, and the shutdown (which closes the dispatcher under that lock) waited with it.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator

import pytest

from llmq.devstack import LocalStack
from tests.support.waits import until

pytestmark = pytest.mark.slow

#: The worker's soft-shutdown window; it must be gone well inside the guard below.
WINDOW_S = "10"
EXIT_GUARD_S = 30


@pytest.fixture
def stack() -> Iterator[LocalStack]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMQ_")}  # a Redis of its own, to stop
    with LocalStack(env=env) as s:
        s.start_redis()
        yield s


def _log(stack: LocalStack, name: str) -> str:
    return (stack.log_dir / f"{name}.log").read_text(errors="replace")


def test_sigterm_stops_a_gevent_worker_whose_redis_is_gone(stack: LocalStack) -> None:
    stack.start_simulator()
    worker = stack.start_worker(
        pool="gevent", concurrency=4, name="orphan", extra_env={"LLMQ_SOFT_SHUTDOWN_TIMEOUT": WINDOW_S}
    )
    stack.wait_for_workers(1)
    assert stack.redis is not None
    stack.redis.stop()
    # the consumer noticed (a heartbeat caught publishing at that moment held up its restart, and the
    # shutdown after it, for as long as Redis stayed away: tests/workers/runtime/test_events.py)
    until(lambda: "(1/100)" in _log(stack, "orphan"), "the worker to retry its broker", EXIT_GUARD_S)
    os.kill(worker.pid, signal.SIGTERM)
    until(lambda: worker.poll() is not None, "the worker to exit on SIGTERM without its Redis", EXIT_GUARD_S)
    assert "Traceback" not in _log(stack, "orphan"), _log(stack, "orphan")[-3000:]

"""Worker tools for the tests (a tool module, imported by test workers through ``LLMQ_TOOLS``).

In-process workers count calls in :data:`CALLS`; subprocess workers count in Redis
(``count_visit`` increments ``VISITS_KEY`` on ``LLMQ_REDIS_URL``), outside the worker.
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Annotated

import redis
from pydantic import Field

from workers.settings import Settings
from workers.tools import CancelToken, tool

CALLS: Counter[str] = Counter()
#: Max number of ``exclusive`` calls seen running at once.
ACTIVE = {"now": 0, "max": 0}
_lock = threading.Lock()
#: Two ``rendezvous`` calls only both succeed when they run at the same time.
RENDEZVOUS = threading.Barrier(2, timeout=10)
VISITS_KEY = "llmq:test:visits"
LEAKED_KEY = "sk-proj-LEAKEDkey0123456789abcdef"
CAPITALS = {"France": "Paris", "UK": "London", "Japan": "Tokyo"}


@tool
def get_capital(country: Annotated[str, Field(min_length=2, examples=["France"])]) -> str:
    """The capital city of a country."""
    CALLS["get_capital"] += 1
    return CAPITALS.get(country, "unknown")


@tool(timeout_s=1)
def sleepy() -> str:
    """Sleeps far past its 1 s timeout and ignores cancellation."""
    CALLS["sleepy"] += 1
    time.sleep(4)
    return "woke up"


@tool
def patient(cancel: CancelToken) -> str:
    """Waits for up to a minute, stopping at once when cancelled."""
    CALLS["patient"] += 1
    if cancel.wait(60):
        CALLS["patient_cancelled"] += 1
        return "stopped"
    return "waited"


@tool
def boom() -> str:
    """Always fails (with a credential in its message)."""
    CALLS["boom"] += 1
    raise RuntimeError(f"kaboom while using {LEAKED_KEY}")


@tool
def leak_key() -> str:
    """Returns a provider key (which must never leave the worker unredacted)."""
    CALLS["leak_key"] += 1
    return f"the key is {LEAKED_KEY}"


@tool
def rendezvous() -> str:
    """Succeeds only when another rendezvous call runs concurrently."""
    CALLS["rendezvous"] += 1
    RENDEZVOUS.wait()
    return "met"


@tool(sequential=True)
def exclusive() -> str:
    """A sequential tool: records how many of it ran at once."""
    with _lock:
        CALLS["exclusive"] += 1
        ACTIVE["now"] += 1
        ACTIVE["max"] = max(ACTIVE["max"], ACTIVE["now"])
    time.sleep(0.05)
    with _lock:
        ACTIVE["now"] -= 1
    return "alone"


def _visits() -> redis.Redis:
    return redis.Redis.from_url(os.environ["LLMQ_REDIS_URL"])


@tool
def count_visit(place: Annotated[str, Field(examples=["museum"])]) -> str:
    """Counts its runs in Redis (outside the worker process)."""
    client = _visits()
    try:
        n = client.incr(VISITS_KEY)
    finally:
        client.close()
    return f"visit {n} to {place}"


def reset() -> None:
    CALLS.clear()
    ACTIVE.update(now=0, max=0)
    RENDEZVOUS.reset()


def tools_worker_settings(redis_url: str, *, concurrency: int) -> Settings:
    """An in-process threads worker that loads this tool module."""
    return Settings(
        redis_url=redis_url, pool="threads", concurrency=concurrency, coalesce_ms=20.0, claim_lease_s=10,
        tools="tests.support.tools",
    )  # fmt: skip


STARTED_KEY = "llmq:test:started"


@tool
def slow_visit(place: Annotated[str, Field(examples=["museum"])], cancel: CancelToken) -> str:
    """Counts its starts in Redis, then takes a minute (a worker can die while it runs)."""
    client = _visits()
    try:
        client.incr(STARTED_KEY)
    finally:
        client.close()
    cancel.wait(60)
    return f"slow visit to {place}"


@tool(idempotent=True)
def slow_visit_idempotent(place: Annotated[str, Field(examples=["park"])], cancel: CancelToken) -> str:
    """Like slow_visit but safe to run again: the second start returns at once."""
    client = _visits()
    try:
        starts = int(client.incr(STARTED_KEY))
    finally:
        client.close()
    if starts == 1:
        cancel.wait(60)
    return f"visited {place} (start {starts})"


#: Where the spinning tools write their pid and look for ``release`` (a directory of the test's).
SPIN_DIR_ENV = "LLMQ_TEST_SPIN_DIR"


def _spin(tag: str) -> str:
    """CPU-bound until the test drops a ``release`` file: never yields to gevent, has no token to check."""
    folder = Path(os.environ[SPIN_DIR_ENV])
    (folder / f"{tag}.pid").write_text(str(os.getpid()))
    while not (folder / "release").exists():
        pass
    (folder / f"{tag}.done").write_text("")
    return f"{tag} spun"


@tool(timeout_s=2, isolation="thread")
def spin_thread() -> str:
    """Spins on an OS thread until released, far past its 2 s timeout."""
    return _spin("thread")


@tool(timeout_s=2, isolation="process")
def spin_process() -> str:
    """Spins in a process of its own until released, far past its 2 s timeout (killed at it)."""
    return _spin("process")


@tool(isolation="process")
def runner_pid(cancel: CancelToken) -> dict[str, object]:
    """The process it runs in, and whether its token is set (never, in a process of its own)."""
    return {"pid": os.getpid(), "cancelled": cancel.cancelled}


@tool(isolation="process")
def process_boom() -> str:
    """Fails in its process, with a key in the message."""
    raise ValueError(f"boom in a process with {LEAKED_KEY}")

"""Shared fixtures: a real Redis server of our own, the provider simulator, an in-process worker.

Redis: ``LLMQ_TEST_REDIS_URL`` if set, else a dedicated ``redis-server`` child on a free port
(the same launcher the demo uses), so tests can flush freely without touching anyone's data.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Iterator

import pytest
import redis
from celery.contrib.testing.worker import start_worker

from llmq.localredis import ManagedRedis
from producers import Client
from simulator.app import SimConfig, SimulatorThread
from simulator.env import provider_env
from workers.runtime.app import close_runner, create_app
from workers.settings import Settings


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish() -> None:
    """Collect the tests' garbage before pytest's end-of-run plugins import (and assertion-rewrite)
    their modules: on CPython 3.11, a collection that finalizes coroutines and frames left by the
    asyncio Redis client in the middle of ``ast.parse`` fails it ("AST constructor recursion depth
    mismatch") and with it the whole run."""
    gc.collect()


@pytest.fixture(scope="session")
def redis_server_url() -> Iterator[str]:
    url = os.environ.get("LLMQ_TEST_REDIS_URL")
    if url:
        yield url
        return
    with ManagedRedis() as server:
        yield server.url


@pytest.fixture
def redis_url(redis_server_url: str) -> str:
    client = redis.Redis.from_url(redis_server_url)
    client.flushdb()
    client.close()
    return redis_server_url


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture(scope="session")
def simulator_session() -> Iterator[SimulatorThread]:
    with SimulatorThread(SimConfig(latency=0.0, tokens_per_s=0.0)) as sim:
        yield sim


@pytest.fixture
def simulator(simulator_session: SimulatorThread) -> SimulatorThread:
    """A running simulator with fresh counters and fault sequences and default pacing."""
    sim = simulator_session.simulator
    sim.config.latency = 0.0
    sim.config.tokens_per_s = 0.0
    sim.config.completion_tokens = 20
    sim.config.fault_rates = {}
    sim.planner.rates = {}
    sim.stats = type(sim.stats)()
    sim.planner.reset()
    return simulator_session


# An in-process Celery worker (threads pool) wired to the test Redis and the simulator.
@pytest.fixture
def worker_settings(redis_url: str) -> Settings:
    return Settings(redis_url=redis_url, pool="threads", concurrency=16, coalesce_ms=20.0, claim_lease_s=10)


@pytest.fixture
def worker(worker_settings: Settings, simulator: SimulatorThread) -> Iterator[object]:
    app = create_app(worker_settings, provider_env=provider_env(simulator.url))
    with start_worker(
        app, pool="threads", concurrency=worker_settings.concurrency, perform_ping_check=False, shutdown_timeout=10
    ) as w:
        yield w
    close_runner(app)


@pytest.fixture
def client(redis_url: str) -> Iterator[Client]:
    with Client(redis_url) as c:
        yield c

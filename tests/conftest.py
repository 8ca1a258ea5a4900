"""Shared fixtures: a real Redis server of our own, the provider simulator, an in-process worker.

Redis: ``LLMQ_TEST_REDIS_URL`` if set, else a dedicated ``redis-server`` child on a free port
(the same launcher the demo uses), so tests can flush freely without touching anyone's data.
"""

from __future__ import annotations

import gc
import os
import shutil
import socket
import subprocess
import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
import redis
from celery.contrib.testing.worker import start_worker

from llmq.localredis import ManagedRedis
from producers import Client
from producers.settings import ProducerSettings
from simulator.app import SimConfig, SimulatorThread
from simulator.env import provider_env
from tests.support.brokers import Broker, amqp_worker
from workers.contract import DEFAULT_QUEUE
from workers.runtime.app import close_runner, create_app
from workers.settings import Settings


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish() -> None:
    """Collect the tests' garbage before pytest's end-of-run plugins import (and assertion-rewrite)
    their modules: on CPython 3.11, a collection that finalizes coroutines and frames left by the
    asyncio Redis client in the middle of ``ast.parse`` fails it ("AST constructor recursion depth
    mismatch") and with it the whole run."""
    gc.collect()


@pytest.fixture
def no_cyclic_gc() -> Iterator[None]:
    """The cyclic collector off for the test (collected first): what is freed is freed by reference
    counting, as an ended job's objects must be."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


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
    sim.prompt_cache.clear()
    return simulator_session


#: The RabbitMQ the amqp-parametrized tests use (``LLMQ_TEST_AMQP_URL``; a private vhost is made on it).
DEFAULT_TEST_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672//"


def _rabbitmqctl(*args: str) -> bool:
    """Run ``rabbitmqctl``; False when it is missing, fails or does not answer in time (a CLI that cannot
    reach its node, e.g. another Erlang cookie, may hang: the tests then use the configured vhost)."""
    if shutil.which("rabbitmqctl") is None:
        return False
    try:
        done = subprocess.run(
            ["rabbitmqctl", "-q", "--timeout", "15", *args], capture_output=True, timeout=25, check=False
        )
    except subprocess.TimeoutExpired:
        return False
    return done.returncode == 0


@pytest.fixture(scope="session")
def amqp_server_url() -> Iterator[str]:
    """A RabbitMQ URL on a vhost of this test run's own (deleted after), so leftovers and other runs'
    workers (Celery's control messages share a vhost) cannot interfere. Where ``rabbitmqctl`` cannot
    make one, the configured vhost, with unique queue names per test. No RabbitMQ: skipped, but
    under ``CI=true`` the test fails (``.ci/run`` starts one)."""
    base = os.environ.get("LLMQ_TEST_AMQP_URL", DEFAULT_TEST_AMQP_URL)
    parts = urlsplit(base)
    try:
        socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 5672), timeout=2).close()
    except OSError as exc:
        message = f"RabbitMQ at {parts.hostname}:{parts.port or 5672} is not reachable ({exc})"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    vhost = f"llmq-test-{uuid.uuid4().hex[:10]}"
    user = parts.username or "guest"
    if not (_rabbitmqctl("add_vhost", vhost) and _rabbitmqctl("set_permissions", "-p", vhost, user, ".*", ".*", ".*")):
        yield base
        return
    try:
        yield parts._replace(path=f"/{vhost}").geturl()
    finally:
        _rabbitmqctl("delete_vhost", vhost)


@pytest.fixture
def broker(request: pytest.FixtureRequest, redis_url: str) -> Iterator[Broker]:
    """The job queue: Redis by default; ``@pytest.mark.parametrize("broker", ["redis", "amqp"],
    indirect=True)`` runs a test on both. On RabbitMQ each test gets a queue of its own, deleted after."""
    kind = getattr(request, "param", "redis")
    if kind == "redis":
        yield Broker(kind, redis_url, DEFAULT_QUEUE)
        return
    assert kind == "amqp", kind
    url = request.getfixturevalue("amqp_server_url")
    queue = f"llmq-test-{uuid.uuid4().hex[:10]}"
    yield Broker(kind, url, queue)
    from kombu import Connection

    with Connection(url) as conn:
        conn.default_channel.queue_delete(queue)


# An in-process Celery worker (threads pool) wired to the test Redis, the test's broker and the simulator.
@pytest.fixture
def worker_settings(redis_url: str, broker: Broker) -> Settings:
    return Settings(
        redis_url=redis_url, broker_url=broker.url, queue=broker.queue,
        pool="threads", concurrency=16, coalesce_ms=20.0, claim_lease_s=10,
    )  # fmt: skip


@pytest.fixture
def worker(worker_settings: Settings, simulator: SimulatorThread) -> Iterator[object]:
    app = create_app(worker_settings, provider_env=provider_env(simulator.url))
    with start_worker(
        app,
        pool="threads",
        concurrency=worker_settings.concurrency,
        perform_ping_check=False,
        shutdown_timeout=10,
        without_heartbeat=not amqp_worker(worker_settings),
    ) as w:
        yield w
    close_runner(app)


@pytest.fixture
def fresh_tools() -> Iterator[None]:
    """The test tool module's call counters and barriers (``tests/support/tools.py``), reset around a test."""
    from tests.support import tools

    tools.reset()
    yield
    tools.reset()


@pytest.fixture
def client(redis_url: str, broker: Broker) -> Iterator[Client]:
    settings = ProducerSettings(redis_url=redis_url, broker_url=broker.url, queue=broker.queue)
    with Client(settings=settings) as c:
        yield c

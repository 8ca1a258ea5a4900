"""An in-process Celery worker (threads pool) wired to the test Redis and the simulator."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from celery.contrib.testing.worker import start_worker

from producers import Client
from simulator.app import SimulatorThread
from simulator.env import provider_env
from workers.app import close_runner, create_app
from workers.settings import Settings


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

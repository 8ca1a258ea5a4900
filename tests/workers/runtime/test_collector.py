"""The worker's collector: built objects frozen, young collections at the configured threshold."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest
from celery.contrib.testing.worker import start_worker

from workers.runtime.app import close_runner, create_app
from workers.runtime.collector import settle_collector
from workers.settings import Settings


@pytest.fixture
def python_collector() -> Iterator[None]:
    """Python's own collector settings before and after (the test process's, shared by every test)."""
    before = gc.get_threshold()
    gc.set_threshold(700, 10, 10)
    yield
    gc.set_threshold(*before)


def test_the_young_threshold_is_set_and_the_older_ones_kept(python_collector: None) -> None:
    gc.set_threshold(700, 12, 13)
    settle_collector(20_000)
    assert gc.get_threshold() == (20_000, 12, 13)
    assert gc.get_freeze_count() > 0  # what existed is out of the collector's sight


def test_zero_keeps_pythons_thresholds(python_collector: None) -> None:
    settle_collector(0)
    assert gc.get_threshold() == (700, 10, 10)


def test_a_starting_worker_sets_its_collector(python_collector: None, redis_url: str) -> None:
    app = create_app(Settings(redis_url=redis_url, pool="threads", concurrency=2, gc_young_threshold=30_000))
    with start_worker(
        app, pool="threads", concurrency=2, perform_ping_check=False, shutdown_timeout=10, without_heartbeat=True
    ):
        assert gc.get_threshold()[0] == 30_000
    close_runner(app)

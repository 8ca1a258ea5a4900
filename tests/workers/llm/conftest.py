"""Fixtures of the provider tests: a replay HTTP server and a client to it, one of each per module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.replay_server import ReplayServer, local_client
from workers.llm.httpclient import HTTPClient


@pytest.fixture(scope="module")
def server() -> Iterator[ReplayServer]:
    with ReplayServer() as srv:
        yield srv


@pytest.fixture(scope="module")
def http() -> Iterator[HTTPClient]:
    with local_client() as client:
        yield client

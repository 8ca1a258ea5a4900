"""Aborting whole-body calls in flight (``stream: false`` jobs), against the real simulator."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from simulator.app import SimulatorThread
from tests.support.doubles import provider_for
from tests.support.replay_server import local_client
from tests.support.waits import until
from workers.contract import Message, RequestParams
from workers.llm.abort import AbortSignal
from workers.llm.base import ChatRequest
from workers.llm.errors import JobCancelledError
from workers.llm.httpclient import HTTPClient


@pytest.fixture(scope="module")
def http() -> Iterator[HTTPClient]:
    with local_client(read_timeout=30.0) as client:
        yield client


def test_the_signal_closes_what_is_armed_and_stays_fired() -> None:
    signal = AbortSignal()
    closed: list[str] = []
    assert signal.arm(lambda: closed.append("a"))
    signal.disarm()
    signal.fire()
    assert closed == [] and signal.fired  # nothing was armed when it fired
    assert not signal.arm(lambda: closed.append("b"))  # fired: what is armed now is closed at once
    assert closed == ["b"]
    other = AbortSignal()
    other.arm(lambda: closed.append("c"))
    other.fire()
    other.fire()
    assert closed == ["b", "c"]


@pytest.mark.parametrize("name", ["openai", "anthropic", "ollama"])
def test_a_fired_signal_ends_a_blocked_whole_body_read(name: str, http: HTTPClient, simulator: SimulatorThread) -> None:
    provider = provider_for(name, http, simulator.url, api_key="sk-sim")
    signal = AbortSignal()
    request = ChatRequest(
        messages=[Message(role="user", content="wait")],
        params=RequestParams(max_tokens=20),
        abort=signal,
        headers={"x-llmq-sim-fault": "stall@20"},
    )

    def fire_once_sent() -> None:  # order, not a delay: cancel while the upstream holds the request
        try:
            until(lambda: simulator.simulator.stats.requests >= 1, "the request to reach the simulator", 60, 0.01)
        finally:
            signal.fire()

    threading.Thread(target=fire_once_sent, daemon=True).start()
    with pytest.raises(JobCancelledError):  # without the abort the answer would arrive, 20 s on
        provider.complete("m", request)
    assert simulator.simulator.stats.requests == 1
    with pytest.raises(JobCancelledError, match="before the request was sent"):
        provider.complete("m", request)  # a retry after the cancel never reaches the upstream
    assert simulator.simulator.stats.requests == 1

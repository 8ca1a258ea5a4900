"""Hostile input through the real stack: the job always ends with a typed terminal event."""

from __future__ import annotations

from collections.abc import Iterator

import httpx2
import pytest

from producers import Client
from producers.gateway import GatewaySettings, create_gateway
from producers.gateway.server import GatewayThread

TOKEN = "hostile-token-93be01"


@pytest.fixture
def gw(redis_url: str) -> Iterator[GatewayThread]:
    settings = GatewaySettings(redis_url=redis_url, tokens={TOKEN: "attacker"})  # default 1 MiB body limit
    with GatewayThread(create_gateway(settings)) as server:
        yield server


def test_a_million_spaces_through_the_gateway_end_the_job(gw: GatewayThread, worker, client: Client) -> None:
    """tiktoken panics (a BaseException) on 1,000,000 spaces in one piece: the pre-count is bounded,
    the job runs, and the HTTP request gets its answer instead of hanging."""
    body = {"model": "openai:gpt-4o-mini", "messages": [{"role": "user", "content": " " * 1_000_000}]}
    with httpx2.Client(base_url=gw.url, headers={"authorization": f"Bearer {TOKEN}"}, timeout=120) as http:
        response = http.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text[:500]
    completion = response.json()
    assert completion["choices"][0]["finish_reason"] == "stop"
    result = client.result(response.headers["x-llmq-job-id"], timeout=5)
    assert result.status == "succeeded"
    assert result.usage.prompt_tokens > 0

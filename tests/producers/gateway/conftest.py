"""The official openai SDK pointed at a gateway: SDK -> gateway -> Redis -> in-process worker -> simulator."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest

from producers.gateway import GatewaySettings, create_gateway
from producers.gateway.server import GatewayThread

SDK_TOKEN = "sdk-token-5d1e0c2b"


@pytest.fixture
def sdk_gateway(redis_url: str) -> Iterator[GatewayThread]:
    settings = GatewaySettings(redis_url=redis_url, tokens={SDK_TOKEN: "sdk-team"})
    with GatewayThread(create_gateway(settings)) as server:
        yield server


@pytest.fixture
def sdk(sdk_gateway: GatewayThread, worker: object) -> Iterator[openai.OpenAI]:
    """An unchanged ``openai.OpenAI`` client whose ``base_url`` is the gateway (a worker runs behind it)."""
    client = openai.OpenAI(base_url=f"{sdk_gateway.url}/v1", api_key=SDK_TOKEN, max_retries=0, timeout=60)
    yield client
    client.close()

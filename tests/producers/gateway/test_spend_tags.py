"""Spend tags and the end user through the gateway: tags from ``x-llmq-tags``, ``user`` from the body."""

from __future__ import annotations

from collections.abc import Iterator

import httpx2
import openai
import pytest
import redis

from producers.gateway import GatewaySettings, create_gateway
from producers.gateway.server import GatewayThread
from simulator.app import SimulatorThread
from tests.support.waits import until
from workers.accounting.ledger import Ledger

TOKEN = "tok-tags-3b7e91c0d2"
MESSAGES = [{"role": "user", "content": "what does this cost"}]


@pytest.fixture
def gw(redis_url: str) -> Iterator[GatewayThread]:
    with GatewayThread(create_gateway(GatewaySettings(redis_url=redis_url, tokens={TOKEN: "team-t"}))) as server:
        yield server


def _rows(redis_client: redis.Redis, by: str) -> dict[str, float]:
    return {r.value: r.spent_usd for r in Ledger(redis_client).report(by, days=1).rows}  # type: ignore[arg-type]


def test_chat_completions_take_tags_from_the_header_and_user_from_the_body(
    gw: GatewayThread, worker: object, simulator: SimulatorThread, redis_client: redis.Redis
) -> None:
    sdk = openai.OpenAI(base_url=f"{gw.url}/v1", api_key=TOKEN, max_retries=0, timeout=60)
    raw = sdk.chat.completions.with_raw_response.create(
        model="openai:gpt-4o-mini",
        messages=MESSAGES,
        user="end-user-7",
        extra_headers={"x-llmq-tags": "checkout, beta"},
    )
    raw.parse()
    job = sdk.get(f"/jobs/{raw.headers['x-llmq-job-id']}", cast_to=object)
    sdk.close()
    assert isinstance(job, dict)
    result = job["result"]
    assert (result["tags"], result["user"], result["tenant"]) == (["checkout", "beta"], "end-user-7", "team-t")
    cost = result["cost_usd"]
    assert cost > 0
    assert _rows(redis_client, "tag") == {
        "checkout": pytest.approx(cost, abs=1e-6),
        "beta": pytest.approx(cost, abs=1e-6),
    }
    assert _rows(redis_client, "user") == {"end-user-7": pytest.approx(cost, abs=1e-6)}
    assert _rows(redis_client, "tenant") == {"team-t": pytest.approx(cost, abs=1e-6)}


def test_jobs_endpoint_adds_header_tags_to_the_bodys_and_refuses_a_bad_one(
    gw: GatewayThread, worker: object, simulator: SimulatorThread
) -> None:
    with httpx2.Client(base_url=gw.url, headers={"authorization": f"Bearer {TOKEN}"}, timeout=30) as http:
        body = {"model": "openai:gpt-4o-mini", "messages": MESSAGES, "tags": ["own"], "user": "u-1"}
        made = http.post("/v1/jobs", json=body, headers={"x-llmq-tags": "extra,own"})
        assert made.status_code == 202, made.text
        job_id = made.json()["id"]
        until(lambda: http.get(f"/v1/jobs/{job_id}").json().get("result") is not None, "the job's result", 30)
        result = http.get(f"/v1/jobs/{job_id}").json()["result"]
        assert result["tags"] == ["own", "extra"] and result["user"] == "u-1"  # a repeated tag counts once
        bad = http.post("/v1/chat/completions", json={"model": "openai:gpt-4o-mini", "messages": MESSAGES},
                        headers={"x-llmq-tags": "has space"})  # fmt: skip
        assert bad.status_code == 400 and "tags" in bad.json()["error"]["message"]
        many = http.post("/v1/jobs", json=body, headers={"x-llmq-tags": ",".join(f"t{i}" for i in range(9))})
        assert many.status_code == 400 and "tags" in many.json()["error"]["message"]

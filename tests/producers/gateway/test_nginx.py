"""A real nginx (Debian package, 127.0.0.1) running ops/nginx.conf in front of the gateway.

Checks that events arrive spread out in time, as the job produces them, not in one burst at the
end: the first delta reaches the client before the last one was even published, and the
arrivals span most of the upstream stream's duration. The gateway's ``X-Accel-Buffering: no``
keeps even an nginx with ``proxy_buffering on`` and gzip for ``text/event-stream`` streaming
(without the header such an nginx holds everything to the end, and this test fails if the gateway
stops sending it).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2
import openai
import pytest
import redis

from producers.gateway import GatewaySettings, create_gateway
from producers.gateway.server import GatewayThread
from producers.gateway.sse import SSEParser
from simulator.app import SimulatorThread
from tests.support.nginx import running_nginx
from workers.contract import JobKeys

ROOT = Path(__file__).resolve().parents[3]
TOKEN = "edge-token-6b4f0d"
JOB = {"model": "openai:gpt-4o-mini", "messages": [{"role": "user", "content": "through the proxy"}]}


@contextlib.contextmanager
def nginx_in_front(upstream_port: int, prefix: Path, conf_text: str) -> Iterator[str]:
    with running_nginx(conf_text, upstream_port, prefix, access_log=False) as port:
        yield f"http://127.0.0.1:{port}"


@pytest.fixture
def gw(redis_url: str) -> Iterator[GatewayThread]:
    with GatewayThread(create_gateway(GatewaySettings(redis_url=redis_url, tokens={TOKEN: "edge"}))) as server:
        yield server


@pytest.mark.parametrize("config", ["ops", "hostile"], ids=["ops-config", "buffering-and-gzip-on"])
def test_job_events_arrive_through_nginx_as_they_happen(
    gw: GatewayThread, worker, simulator: SimulatorThread, tmp_path: Path, config: str
) -> None:
    simulator.simulator.config.tokens_per_s = 10
    simulator.simulator.config.completion_tokens = 15  # ~1.5 s of deltas, ~0.1 s apart
    conf = (ROOT / "ops" / "nginx.conf").read_text()
    if config == "hostile":  # what the header must survive: buffering on and gzip for event streams
        conf = conf.replace("proxy_buffering off;", "proxy_buffering on;")
        conf = conf.replace("gzip off;", "gzip on; gzip_types text/event-stream; gzip_min_length 1;")
    with (
        nginx_in_front(gw.port, tmp_path, conf) as edge,
        httpx2.Client(base_url=edge, headers={"authorization": f"Bearer {TOKEN}"}, timeout=30) as http,
    ):
        created = http.post("/v1/jobs", json=JOB)
        assert created.status_code == 202, created.text
        job_id = created.json()["id"]
        parser = SSEParser()
        arrivals: list[tuple[float, dict]] = []
        with http.stream("GET", f"/v1/jobs/{job_id}/events") as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            assert "x-accel-buffering" not in response.headers  # nginx consumes it
            for chunk in response.iter_bytes():
                now = time.time()
                arrivals += [(now, json.loads(data)) for _, _, data in parser.feed(chunk)]
    deltas = [(at, event) for at, event in arrivals if event["type"] == "delta"]
    assert len(deltas) >= 10 and arrivals[-1][1]["type"] == "done"
    # order, not durations: the first delta reached the client before the worker published the
    # last delta (and so before the job ended): nginx passed the stream on instead of buffering it
    first_arrival, last_published = deltas[0][0], deltas[-1][1]["ts"]
    assert first_arrival < last_published
    assert [e["seq"] for _, e in arrivals] == sorted(e["seq"] for _, e in arrivals)


def test_openai_sdk_streams_through_nginx(
    gw: GatewayThread, worker, simulator: SimulatorThread, tmp_path: Path, redis_client: redis.Redis
) -> None:
    simulator.simulator.config.tokens_per_s = 10
    simulator.simulator.config.completion_tokens = 15
    with nginx_in_front(gw.port, tmp_path, (ROOT / "ops" / "nginx.conf").read_text()) as edge:
        client = openai.OpenAI(base_url=f"{edge}/v1", api_key=TOKEN, max_retries=0)
        raw = client.chat.completions.with_raw_response.create(
            model=JOB["model"], messages=JOB["messages"], stream=True
        )
        result_key = JobKeys(raw.headers["x-llmq-job-id"]).result
        finished_when_seen: list[bool] = []  # per content chunk: had the job already ended?
        text = ""
        for chunk in raw.parse():
            if chunk.choices and chunk.choices[0].delta.content:
                finished_when_seen.append(bool(redis_client.exists(result_key)))
                text += chunk.choices[0].delta.content
        client.close()
    assert len(text.split()) == 15 and len(finished_when_seen) >= 10
    # order, not durations: the first chunks reached the client while the job was still running
    assert finished_when_seen[0] is False

"""Backpressure and disconnects, end to end over real sockets.

* a client that disconnects mid-stream: the gateway notices at once, cancels the job, the worker
  aborts its provider call (the simulator records the stream closed early), and the stored
  cancelled result carries the text produced so far;
* a client that stops reading: its writes stall, and after the per-write deadline it is dropped
  (and its job cancelled), instead of the gateway buffering for it.

The memory bound under many slow readers is in ``test_gateway_memory.py``.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator

import httpx2
import pytest

from producers import Client
from producers.gateway import GatewaySettings, create_gateway
from producers.gateway.server import GatewayThread
from producers.gateway.sse import SSEParser
from simulator.app import SimulatorThread
from tests.support.waits import until

TOKEN = "bp-token-3c9e1f"
PROMPT = [{"role": "user", "content": "stream for a while"}]


def _gateway(redis_url: str, **overrides: object) -> GatewayThread:
    settings = GatewaySettings(redis_url=redis_url, tokens={TOKEN: "bp"}, **overrides)  # type: ignore[arg-type]
    return GatewayThread(create_gateway(settings), sndbuf=16 * 1024)


@pytest.fixture
def gw(redis_url: str) -> Iterator[GatewayThread]:
    with _gateway(redis_url, write_timeout_s=1.0) as server:
        yield server


def _metric(gw: GatewayThread, name: str) -> float:
    text = httpx2.get(f"{gw.url}/metrics").text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


def _sim_stream(sim: SimulatorThread, job_id: str, timeout: float = 10.0) -> dict:
    """The simulator's record of the job's (last) upstream stream, once it has ended."""

    def ended() -> dict | None:
        records = httpx2.get(f"{sim.url}/_sim/streams", params={"job": job_id}).json()
        return records[-1] if records and records[-1]["ended"] is not None else None

    return until(ended, f"the simulator to see the stream of {job_id} end", timeout)


def _open_chat_stream(gw: GatewayThread, *, rcvbuf: int | None = None) -> tuple[socket.socket, str, bytes]:
    """POST a streaming chat completion on a raw socket; returns (socket, job id, body bytes so far)."""
    sock = socket.socket()
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(30)
    sock.connect((gw.host, gw.port))
    body = json.dumps({"model": "openai:gpt-4o-mini", "stream": True, "max_tokens": 100_000, "messages": PROMPT})
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.0\r\nHost: llmq\r\nAuthorization: Bearer %s\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (TOKEN.encode(), len(body), body.encode())
    )
    received = b""
    while b"\r\n\r\n" not in received:
        received += sock.recv(4096)
    head, _, rest = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    job_id = next(line.split(b":", 1)[1].strip() for line in head.split(b"\r\n") if line.startswith(b"x-llmq-job-id"))
    return sock, job_id.decode(), rest


def _content(events: list[tuple[str | None, str | None, str]]) -> str:
    chunks = [json.loads(data) for _, _, data in events if data != "[DONE]"]
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c.get("choices"))


def test_client_disconnect_cancels_the_job_and_the_upstream_stream(
    gw: GatewayThread, worker, simulator: SimulatorThread, client: Client
) -> None:
    simulator.simulator.config.tokens_per_s = 20
    simulator.simulator.config.completion_tokens = 400  # 20 s of streaming unless cancelled
    sock, job_id, rest = _open_chat_stream(gw)
    parser, events = SSEParser(), []
    events += parser.feed(rest)
    while len([e for e in events if '"content"' in e[2]]) < 3:
        events += parser.feed(sock.recv(4096))
    sock.close()
    closed_at = time.time()

    upstream = _sim_stream(simulator, job_id)
    assert upstream["outcome"] == "closed_early"
    assert upstream["ended"] - closed_at < 2.0  # the provider call was aborted, not run out (20 s)

    result = client.result(job_id, timeout=10)
    assert result.status == "cancelled"
    seen = _content(events)
    assert seen and result.content.startswith(seen)  # the text so far is kept
    assert len(result.content.split()) < 400
    # The tokens actually used are settled: the provider reports no usage for a stream cut short,
    # so the worker settles its own labelled estimate of the partial output (and its cost).
    assert result.usage.estimated and result.usage.prompt_tokens > 0
    assert 0 < result.usage.completion_tokens < 400
    assert result.cost_usd is not None and result.cost_usd > 0
    assert _metric(gw, "llmq_gateway_disconnect_cancels_total") == 1
    assert _metric(gw, 'llmq_gateway_sse_ended_total{reason="client_gone"}') == 1


@pytest.mark.parametrize("policy", ["cancel", "finish"])
def test_events_watcher_disconnect_policy(
    redis_url: str, worker, simulator: SimulatorThread, client: Client, policy: str
) -> None:
    """``/events`` watchers leave jobs running by default (they may resume); ``?on_disconnect=cancel`` opts in."""
    simulator.simulator.config.tokens_per_s = 40
    simulator.simulator.config.completion_tokens = 120
    with (
        _gateway(redis_url) as gw,
        httpx2.Client(base_url=gw.url, headers={"authorization": f"Bearer {TOKEN}"}) as http,
    ):
        job_id = http.post("/v1/jobs", json={"model": "openai:gpt-4o-mini", "messages": PROMPT}).json()["id"]
        query = "?on_disconnect=cancel" if policy == "cancel" else ""
        parser = SSEParser()
        with http.stream("GET", f"/v1/jobs/{job_id}/events{query}") as response:
            for chunk in response.iter_bytes():
                if any(name == "delta" for _, name, _ in parser.feed(chunk)):
                    break
        result = client.result(job_id, timeout=20)
        upstream = _sim_stream(simulator, job_id)
    if policy == "cancel":
        assert result.status == "cancelled" and upstream["outcome"] == "closed_early"
    else:
        assert result.status == "succeeded" and len(result.content.split()) == 120 and upstream["outcome"] == "ok"


def test_chat_completion_can_be_configured_to_finish_after_disconnect(
    redis_url: str, worker, simulator: SimulatorThread, client: Client
) -> None:
    simulator.simulator.config.tokens_per_s = 50
    simulator.simulator.config.completion_tokens = 60
    with _gateway(redis_url, on_disconnect="finish") as gw:
        sock, job_id, _ = _open_chat_stream(gw)
        sock.recv(4096)
        sock.close()
        result = client.result(job_id, timeout=20)
    assert result.status == "succeeded" and len(result.content.split()) == 60


def test_a_client_that_stops_reading_is_dropped_after_the_write_deadline(
    gw: GatewayThread, worker, simulator: SimulatorThread, client: Client
) -> None:
    simulator.simulator.config.tokens_per_s = 10_000
    simulator.simulator.config.completion_tokens = 100_000  # >= 10 s of output, far more than the buffers hold
    sock, job_id, _ = _open_chat_stream(gw, rcvbuf=4096)
    try:
        # The client reads nothing more. Once the socket buffers and uvicorn's write buffer are
        # full, the gateway's send waits; one second later the client is dropped.
        until(
            lambda: _metric(gw, 'llmq_gateway_sse_ended_total{reason="write_timeout"}') >= 1,
            "the stalled client to be dropped",
            60,
            0.1,
        )
        upstream = _sim_stream(simulator, job_id)
        assert upstream["outcome"] == "closed_early"  # dropping the client cancelled the job
        result = client.result(job_id, timeout=10)
        assert result.status == "cancelled" and result.content
        assert result.usage.completion_tokens > 0 and result.cost_usd  # the partial output is settled
        # What the client can still read is what was in flight: the stream ends without [DONE].
        sock.settimeout(10)
        tail = b""
        while chunk := sock.recv(65536):
            tail += chunk
        assert b"[DONE]" not in tail
        # Every whole frame in flight carried text of the job's (settled, partial) content, in order;
        # the first frame may be cut where the client stopped reading.
        frames = [f for f in tail.split(b"\n\n")[1:-1] if f.startswith(b"data: {")]
        texts = [json.loads(f.removeprefix(b"data: "))["choices"][0]["delta"].get("content", "") for f in frames]
        assert "".join(texts) in result.content
    finally:
        sock.close()
    assert _metric(gw, "llmq_gateway_sse_streams") == 0

"""The gateway's jobs API over real HTTP: auth, tenants, body limits, SSE framing and resumption.

A real uvicorn server on 127.0.0.1 (in a thread) in front of the test Redis, the in-process
worker and the simulator.
"""

from __future__ import annotations

import json
import re
import socket
import time
from collections.abc import Iterator

import httpx2
import pytest

from producers.gateway import GatewaySettings, create_gateway
from producers.gateway.server import GatewayThread
from producers.gateway.sse import SSEParser
from simulator.app import SimulatorThread

TOKEN_A = "tok-a-7f3c2e9d41b8"
TOKEN_B = "tok-b-0a9b8c7d6e5f"
TOKENS = {TOKEN_A: "team-a", TOKEN_B: "team-b"}
JOB = {"model": "openai:gpt-4o-mini", "messages": [{"role": "user", "content": "hello there"}]}


@pytest.fixture
def gw(redis_url: str) -> Iterator[GatewayThread]:
    settings = GatewaySettings(redis_url=redis_url, tokens=TOKENS, heartbeat_s=0.2, max_body_bytes=64 * 1024)
    with GatewayThread(create_gateway(settings)) as server:
        yield server


def _http(gw: GatewayThread, token: str | None = TOKEN_A) -> httpx2.Client:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    return httpx2.Client(base_url=gw.url, headers=headers, timeout=30)


def _events(client: httpx2.Client, path: str, **headers: str) -> tuple[list[tuple[str | None, str | None, str]], bytes]:
    """Every SSE event of ``path`` until the stream ends, and the raw bytes (for comments)."""
    parser, raw, events = SSEParser(), b"", []
    with client.stream("GET", path, headers=headers) as response:
        assert response.status_code == 200, response.read()
        for chunk in response.iter_bytes():
            raw += chunk
            events += parser.feed(chunk)
    return events, raw


def _error(response: httpx2.Response) -> dict:
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    return body["error"]


# --- auth and tenants -------------------------------------------------------------------------------


@pytest.mark.parametrize("token", [None, "wrong-token-123", TOKEN_A + "x"], ids=["missing", "wrong", "suffix"])
def test_every_v1_endpoint_needs_a_valid_token(gw: GatewayThread, token: str | None) -> None:
    with _http(gw, token) as client:
        for method, path in [
            ("POST", "/v1/jobs"),
            ("GET", "/v1/jobs/job_00000000000000000000000000000000"),
            ("GET", "/v1/jobs/x/events"),
            ("POST", "/v1/jobs/x/cancel"),
            ("POST", "/v1/chat/completions"),
            ("GET", "/v1/no/such/route"),
        ]:
            response = client.request(method, path, json=JOB)
            assert response.status_code == 401, (method, path, response.text)
            assert response.headers["www-authenticate"].startswith("Bearer")
            error = _error(response)
            assert "API key" in error["message"]
            if token:
                assert token not in response.text
    with _http(gw, None) as client:  # health and metrics stay open for probes and Prometheus
        assert client.get("/healthz").status_code == 200
        assert client.get("/metrics").status_code == 200


def test_a_tenant_cannot_read_or_cancel_another_tenants_job(gw: GatewayThread, worker) -> None:
    with _http(gw, TOKEN_A) as a, _http(gw, TOKEN_B) as b:
        created = a.post("/v1/jobs", json=JOB)
        assert created.status_code == 202
        job_id = created.json()["id"]
        for method, path in [
            ("GET", f"/v1/jobs/{job_id}"),
            ("GET", f"/v1/jobs/{job_id}/events"),
            ("POST", f"/v1/jobs/{job_id}/cancel"),
        ]:
            response = b.request(method, path)
            assert response.status_code == 404, (method, path)
            assert _error(response)["code"] == "job_not_found"
        # indistinguishable from a job that does not exist
        missing = b.get("/v1/jobs/job_0123456789abcdef0123456789abcdef")
        assert missing.status_code == 404 and missing.json()["error"]["message"].startswith("No job with id")
        events, _ = _events(a, f"/v1/jobs/{job_id}/events")
        assert events[-1][1] == "done"
        assert a.get(f"/v1/jobs/{job_id}").json()["status"] == "succeeded"


def test_server_ids_are_random_and_client_ids_are_namespaced_per_tenant(gw: GatewayThread, worker) -> None:
    with _http(gw, TOKEN_A) as a, _http(gw, TOKEN_B) as b:
        ids = {a.post("/v1/jobs", json=JOB).json()["id"] for _ in range(5)}
        assert len(ids) == 5 and all(re.fullmatch(r"job_[0-9a-f]{32}", i) for i in ids)  # 128 random bits

        mine = a.post("/v1/jobs", json={**JOB, "id": "order-42"})
        theirs = b.post("/v1/jobs", json={**JOB, "id": "order-42"})
        assert mine.status_code == theirs.status_code == 202  # no collision, nothing learned
        assert mine.json()["id"] == "team-a:order-42" and theirs.json()["id"] == "team-b:order-42"
        again = a.post("/v1/jobs", json={**JOB, "id": "order-42"})
        assert again.status_code == 200 and again.json()["enqueued"] is False  # idempotent per tenant
        # the bare key resolves inside the caller's tenant; the other tenant's full id is a 404
        assert a.get("/v1/jobs/order-42").json()["id"] == "team-a:order-42"
        assert b.get("/v1/jobs/team-a:order-42").status_code == 404
        reserved = a.post("/v1/jobs", json={**JOB, "id": "job_0123456789abcdef0123456789abcdef"})
        assert reserved.status_code == 400 and _error(reserved)["param"] == "id"


# --- bodies ---------------------------------------------------------------------------------------


def test_oversized_and_malformed_bodies_get_clear_4xx(gw: GatewayThread) -> None:
    big = {**JOB, "messages": [{"role": "user", "content": "x" * (70 * 1024)}]}
    with _http(gw) as client:
        for path in ("/v1/jobs", "/v1/chat/completions"):
            too_big = client.post(path, json=big)
            assert too_big.status_code == 413
            assert (
                _error(too_big)["code"] == "request_too_large" and "65536 bytes" in too_big.json()["error"]["message"]
            )

        def chunks() -> Iterator[bytes]:  # no Content-Length: the limit holds while reading
            for _ in range(80):
                yield b" " * 1024

        streamed = client.post("/v1/jobs", content=chunks(), headers={"content-type": "application/json"})
        assert streamed.status_code == 413

        broken = client.post("/v1/jobs", content=b'{"model": ', headers={"content-type": "application/json"})
        assert broken.status_code == 400 and "could not parse the JSON body" in _error(broken)["message"]
        assert client.post("/v1/jobs", json=[1, 2]).status_code == 400

        invalid = client.post("/v1/jobs", json={"model": "openai:gpt-4o-mini", "messages": [], "max_tokens": -1})
        assert invalid.status_code == 400
        error = _error(invalid)
        assert error["type"] == "invalid_request_error" and error["param"] in ("messages", "max_tokens")
        assert "max_tokens" in error["message"] and "greater than 0" in error["message"]

        other = client.post("/v1/jobs", json={**JOB, "tenant": "team-b"})
        assert other.status_code == 403 and _error(other)["param"] == "tenant"
        assert client.post("/v1/jobs", json={**JOB, "reply_to": "llmq:reply:x"}).status_code == 400

        chat = client.post("/v1/chat/completions", json={**JOB, "frobnicate": True})
        assert chat.status_code == 400
        assert _error(chat)["message"] == "Unrecognized request argument supplied: frobnicate"
        missing = client.post("/v1/chat/completions", json={"messages": JOB["messages"]})
        assert missing.status_code == 400 and _error(missing)["param"] == "model"
        assert client.get("/v1/nope").status_code == 404 and _error(client.get("/v1/nope"))["code"] == "unknown_url"


def test_provider_key_in_an_upstream_error_is_never_echoed(gw: GatewayThread, worker) -> None:
    with _http(gw) as client:
        job_id = client.post("/v1/jobs", json={**JOB, "model": "openai:gpt-4o-mini~401"}).json()["id"]
        events, raw = _events(client, f"/v1/jobs/{job_id}/events")
        assert events[-1][1] == "error"
        status = client.get(f"/v1/jobs/{job_id}").json()
        assert status["status"] == "failed"
        assert "[redacted]" in status["result"]["error"]["message"]
        for text in (json.dumps(status), raw.decode()):
            assert "sk-" not in text
        chat = client.post("/v1/chat/completions", json={**JOB, "model": "openai:gpt-4o-mini~401"})
        assert chat.status_code == 502  # our provider credentials, not the caller's 401
        assert "sk-" not in chat.text and _error(chat)["code"] == "authentication_error"


# --- SSE ------------------------------------------------------------------------------------------


def test_events_stream_is_sse_with_seq_ids_heartbeats_and_a_terminal_event(
    gw: GatewayThread, worker, simulator: SimulatorThread
) -> None:
    simulator.simulator.config.latency = 0.8  # silence before the first token: heartbeats
    simulator.simulator.config.tokens_per_s = 100
    with _http(gw) as client:
        job_id = client.post("/v1/jobs", json=JOB).json()["id"]
        with client.stream("GET", f"/v1/jobs/{job_id}/events") as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            assert response.headers["cache-control"] == "no-cache"
            assert response.headers["x-accel-buffering"] == "no"
            raw = b"".join(response.iter_bytes())
        assert raw.count(b": ping\n\n") >= 2
        events = SSEParser().feed(raw)
        payloads = [json.loads(data) for _, _, data in events]
        assert [int(id_) for id_, _, _ in events] == [p["seq"] for p in payloads] == list(range(len(events)))
        assert [name for _, name, _ in events] == [p["type"] for p in payloads]
        assert payloads[0]["type"] == "start" and payloads[-1]["type"] == "done"
        text = "".join(p["text"] for p in payloads if p["type"] == "delta")
        assert text == payloads[-1]["result"]["content"] and len(text.split()) == 20


def test_last_event_id_resumes_after_the_given_seq(gw: GatewayThread, worker, simulator: SimulatorThread) -> None:
    simulator.simulator.config.tokens_per_s = 200
    with _http(gw) as client:
        job_id = client.post("/v1/jobs", json=JOB).json()["id"]
        full, _ = _events(client, f"/v1/jobs/{job_id}/events")
        middle = int(full[len(full) // 2][0])
        tail, _ = _events(client, f"/v1/jobs/{job_id}/events", **{"last-event-id": str(middle)})
        assert [int(i) for i, _, _ in tail] == [int(i) for i, _, _ in full if int(i) > middle]
        by_query, _ = _events(client, f"/v1/jobs/{job_id}/events?from_seq={middle}")
        assert by_query[0][0] == str(middle)
        assert client.get(f"/v1/jobs/{job_id}/events", headers={"last-event-id": "x"}).status_code == 400
        # resuming past the end (an EventSource reconnecting after the terminal event, a from_seq too far):
        # 204 at once (an EventSource stops reconnecting), not a stream held open for good
        last = int(full[-1][0])
        for past in ({"last-event-id": str(last)}, {"last-event-id": str(last + 40)}):
            ended = client.get(f"/v1/jobs/{job_id}/events", headers=past)
            assert ended.status_code == 204 and ended.headers["x-llmq-ended"] == "1" and not ended.content
        assert client.get(f"/v1/jobs/{job_id}/events?from_seq={last + 20}").status_code == 204
        assert _events(client, f"/v1/jobs/{job_id}/events?from_seq={last}")[0][-1][1] == "done"  # at the end: served


def test_cancel_endpoint_cancels_a_running_job(gw: GatewayThread, worker, simulator: SimulatorThread) -> None:
    simulator.simulator.config.tokens_per_s = 10
    with _http(gw) as client:
        job_id = client.post("/v1/jobs", json=JOB).json()["id"]
        parser = SSEParser()
        with client.stream("GET", f"/v1/jobs/{job_id}/events") as response:
            cancelled = False
            names: list[str | None] = []
            for chunk in response.iter_bytes():
                for _, name, _ in parser.feed(chunk):
                    names.append(name)
                    if name == "delta" and not cancelled:
                        reply = client.post(f"/v1/jobs/{job_id}/cancel")
                        assert reply.json()["cancel_requested"] is True
                        cancelled = True
        assert names[-1] == "cancelled"
        assert client.get(f"/v1/jobs/{job_id}").json()["result"]["status"] == "cancelled"


def test_a_request_that_never_sends_its_body_does_not_hold_the_gateway(gw: GatewayThread) -> None:
    """Half a body, then the client leaves: the handler ends and later requests are served."""
    with socket.create_connection((gw.host, gw.port), timeout=5) as sock:
        sock.sendall(
            b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + TOKEN_A.encode() + b"\r\n"
            b'Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"model"'
        )
        time.sleep(0.2)
    with _http(gw) as client:
        assert client.get("/v1/jobs/nothing").status_code == 404

"""``GET /v1/jobs`` and ``POST /v1/jobs/{id}/replay`` over real HTTP: each tenant sees and replays
only its own jobs (another tenant's is a 404), filters and paging, replay once per original."""

from __future__ import annotations

from collections.abc import Iterator

import httpx2
import pytest

from producers import Client
from producers.gateway import GatewaySettings, create_gateway
from producers.gateway.server import GatewayThread

TOKEN_A = "tok-a-hist-5b2c9e"
TOKEN_B = "tok-b-hist-81d0fa"
TOKENS = {TOKEN_A: "team-a", TOKEN_B: "team-b"}


@pytest.fixture
def gw(redis_url: str) -> Iterator[GatewayThread]:
    with GatewayThread(create_gateway(GatewaySettings(redis_url=redis_url, tokens=TOKENS))) as server:
        yield server


def _http(gw: GatewayThread, token: str) -> httpx2.Client:
    return httpx2.Client(base_url=gw.url, headers={"authorization": f"Bearer {token}"}, timeout=60)


def _submit(http: httpx2.Client, client: Client, model: str) -> str:
    response = http.post("/v1/jobs", json={"model": model, "messages": [{"role": "user", "content": "hi"}]})
    assert response.status_code == 202, response.text
    job_id: str = response.json()["id"]
    client.result(job_id, timeout=60)
    return job_id


def test_tenants_list_read_and_replay_only_their_own_jobs(worker, client: Client, gw: GatewayThread) -> None:
    with _http(gw, TOKEN_A) as a, _http(gw, TOKEN_B) as b:
        a_ok = {_submit(a, client, "openai:gpt-4o-mini") for _ in range(3)}
        a_bad = {_submit(a, client, "openai:gpt-4o-mini~400*") for _ in range(2)}
        b_bad = {_submit(b, client, "openai:gpt-4o-mini~400*") for _ in range(2)}

        listed = a.get("/v1/jobs", params={"limit": 100}).json()
        assert {j["id"] for j in listed["data"]} == a_ok | a_bad and listed["next_before"] is None
        assert {j["tenant"] for j in listed["data"]} == {"team-a"}
        failed = a.get("/v1/jobs", params={"status": "failed", "error": "bad_request"}).json()["data"]
        assert {j["id"] for j in failed} == a_bad
        page = a.get("/v1/jobs", params={"limit": 2}).json()
        assert len(page["data"]) == 2 and page["next_before"] is not None
        rest = a.get("/v1/jobs", params={"limit": 100, "before": page["next_before"]}).json()["data"]
        assert {j["id"] for j in page["data"]} | {j["id"] for j in rest} == a_ok | a_bad
        assert a.get("/v1/jobs", params={"status": "nope"}).status_code == 400
        for bad in ({"before": "nan"}, {"before": "inf"}, {"before": "soon"}, {"since": "-2h"}, {"limit": "0"}):
            refused = a.get("/v1/jobs", params=bad)
            assert refused.status_code == 400 and refused.json()["error"]["param"] == next(iter(bad)), bad

        other = next(iter(b_bad))
        assert a.get(f"/v1/jobs/{other}").status_code == 404
        assert a.post(f"/v1/jobs/{other}/replay").status_code == 404
        assert b.get(f"/v1/jobs/{other}").json()["history"]["error"]["type"] == "bad_request"

        assert a.post(f"/v1/jobs/{next(iter(a_ok))}/replay").status_code == 409  # only failed jobs
        target = next(iter(a_bad))
        dry = a.post(f"/v1/jobs/{target}/replay", params={"dry_run": "1"})
        assert dry.status_code == 200 and dry.json()["outcome"] == "would_submit"
        first = a.post(f"/v1/jobs/{target}/replay")
        assert first.status_code == 202 and first.json()["outcome"] == "submitted"
        copy = first.json()["copy"]
        client.result(copy, timeout=60)
        second = a.post(f"/v1/jobs/{target}/replay")
        assert second.status_code == 200
        assert second.json()["outcome"] == "already_replayed" and second.json()["copy"] == copy
        shown = a.get(f"/v1/jobs/{copy}").json()
        assert shown["history"]["replay_of"] == target and shown["status"] == "failed"
        assert a.get(f"/v1/jobs/{target}").json()["history"]["replayed_as"] == copy
        assert b.get(f"/v1/jobs/{copy}").status_code == 404

"""The simulator's provider batch APIs: OpenAI Files + Batch and Anthropic Message Batches.

The engine's timing is tested with a fake clock (processing time, the completion window's expiry,
cancel); the HTTP side over real HTTP against a running simulator (uploads, listings, results,
errors in each API's shape, replies held after the object exists).
"""

from __future__ import annotations

import json
from typing import Any

import httpx2
import pytest

from simulator.app import SimConfig, SimulatorThread
from simulator.batches import BatchEngine, LineAnswer
from simulator.batchfiles import FileStore, parse_multipart
from simulator.request import RequestError
from tests.support.doubles import FakeClock

ANTHROPIC = {"anthropic-version": "2023-06-01"}


def openai_line(custom_id: str, model: str = "gpt-4o-mini", text: str = "hello") -> dict[str, Any]:
    body = {"model": model, "messages": [{"role": "user", "content": text}], "max_tokens": 10}
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}


def jsonl(lines: list[dict[str, Any]]) -> bytes:
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


def engine_with(clock: FakeClock, processing_s: float, window_s: float) -> tuple[BatchEngine, FileStore]:
    files = FileStore(clock=clock)

    def answer(api: str, body: dict[str, Any], key: str) -> LineAnswer:
        if body["model"].endswith("~expire"):
            return LineAnswer(0, b"")
        payload = {"model": body["model"], "key": key}
        return LineAnswer(200, json.dumps(payload).encode())

    return BatchEngine(files, answer, config=lambda: (processing_s, window_s), clock=clock), files


def test_lines_are_answered_over_the_processing_time_then_the_batch_completes() -> None:
    clock = FakeClock(1_000.0)
    engine, files = engine_with(clock, processing_s=10.0, window_s=100.0)
    upload = files.add("in.jsonl", "batch", jsonl([openai_line(f"r{i}") for i in range(4)]))
    batch = engine.create_openai(
        {"input_file_id": upload.id, "endpoint": "/v1/chat/completions", "completion_window": "24h"}
    )
    clock.now += 5.0
    obj = engine.openai_object(batch)
    assert (obj["status"], obj["request_counts"]["completed"], obj["output_file_id"]) == ("in_progress", 2, None)
    clock.now += 5.0
    obj = engine.openai_object(batch)
    assert obj["status"] == "completed" and obj["request_counts"] == {"total": 4, "completed": 4, "failed": 0}
    out = [json.loads(x) for x in files.get(obj["output_file_id"]).content.splitlines()]
    assert [x["custom_id"] for x in out] == ["r0", "r1", "r2", "r3"]
    assert all(x["response"]["status_code"] == 200 and x["error"] is None for x in out)
    assert obj["error_file_id"] is None
    assert engine.as_json()["lines"] == 4
    engine.openai_object(batch)  # polling again answers nothing twice
    assert engine.as_json()["lines"] == 4 and engine.as_json()["lines_answered_twice"] == 0


def test_the_window_expires_the_lines_not_answered_in_time() -> None:
    clock = FakeClock(0.0)
    engine, files = engine_with(clock, processing_s=40.0, window_s=25.0)
    upload = files.add("in.jsonl", "batch", jsonl([openai_line(f"r{i}") for i in range(4)]))
    batch = engine.create_openai(
        {"input_file_id": upload.id, "endpoint": "/v1/chat/completions", "completion_window": "24h"}
    )
    clock.now += 25.0
    obj = engine.openai_object(batch)
    assert obj["status"] == "expired" and obj["expired_at"] == 25
    assert obj["request_counts"] == {"total": 4, "completed": 2, "failed": 2}
    errors = [json.loads(x) for x in files.get(obj["error_file_id"]).content.splitlines()]
    assert [(e["custom_id"], e["error"]["code"], e["response"]) for e in errors] == [
        ("r2", "batch_expired", None),
        ("r3", "batch_expired", None),
    ]


def test_a_cancel_ends_the_batch_and_cancels_the_lines_not_answered() -> None:
    clock = FakeClock(0.0)
    engine, _ = engine_with(clock, processing_s=30.0, window_s=100.0)
    params = {"model": "claude-x", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
    batch = engine.create_anthropic({"requests": [{"custom_id": f"a{i}", "params": params} for i in range(3)]})
    clock.now += 10.0
    engine.cancel(batch)
    first = engine.anthropic_object(batch, "http://sim")
    assert first["processing_status"] == "canceling" and first["cancel_initiated_at"]
    second = engine.anthropic_object(batch, "http://sim")
    assert second["processing_status"] == "ended"
    assert second["request_counts"] == {"processing": 0, "succeeded": 1, "errored": 0, "canceled": 2, "expired": 0}
    results = {
        json.loads(x)["custom_id"]: json.loads(x)["result"]["type"]
        for x in engine.anthropic_results(batch).splitlines()
    }
    assert results == {"a0": "succeeded", "a1": "canceled", "a2": "canceled"}


def test_openai_refuses_a_file_of_two_models_or_repeated_ids_as_a_failed_batch() -> None:
    engine, files = engine_with(FakeClock(0.0), 0.0, 100.0)
    for lines, code in (
        ([openai_line("a"), openai_line("b", model="gpt-4o")], "mismatched_model"),
        ([openai_line("a"), openai_line("a")], "duplicate_custom_id"),
    ):
        upload = files.add("in.jsonl", "batch", jsonl(lines))
        batch = engine.create_openai(
            {"input_file_id": upload.id, "endpoint": "/v1/chat/completions", "completion_window": "24h"}
        )
        obj = engine.openai_object(batch)
        assert obj["status"] == "failed" and obj["errors"]["data"][0]["code"] == code


def test_anthropic_refuses_bad_custom_ids_at_creation() -> None:
    engine, _ = engine_with(FakeClock(0.0), 0.0, 100.0)
    params = {"model": "m", "max_tokens": 5, "messages": []}
    with pytest.raises(RequestError, match="custom_id"):
        engine.create_anthropic({"requests": [{"custom_id": "has space", "params": params}]})
    with pytest.raises(RequestError, match="more than once"):
        engine.create_anthropic({"requests": [{"custom_id": "a", "params": params}] * 2})


def test_multipart_bodies_are_read_and_malformed_ones_refused() -> None:
    body = (
        b'--XyZ\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n'
        b'--XyZ\r\nContent-Disposition: form-data; name="file"; filename="a.jsonl"\r\n'
        b'Content-Type: application/jsonl\r\n\r\n{"x": 1}\n\r\n--XyZ--\r\n'
    )
    fields = parse_multipart("multipart/form-data; boundary=XyZ", body)
    assert fields == {"purpose": (None, b"batch"), "file": ("a.jsonl", b'{"x": 1}\n')}
    with pytest.raises(RequestError):
        parse_multipart("multipart/form-data; boundary=XyZ", body[:-9])
    with pytest.raises(RequestError):
        parse_multipart("application/json", body)


@pytest.fixture(scope="module")
def sim() -> Any:
    with SimulatorThread(SimConfig()) as running:
        yield running


@pytest.fixture()
def client(sim: SimulatorThread) -> Any:
    with httpx2.Client(base_url=sim.url, timeout=10) as c:
        c.post("/_sim/reset")
        c.post("/_sim/config", json={"batch_processing_s": 0.0, "batch_upload_delay_s": 0.0})
        yield c


def test_openai_batch_over_http_with_per_line_faults(client: httpx2.Client) -> None:
    lines = [openai_line("ok-1"), openai_line("bad", "gpt-4o-mini~503"), openai_line("late", "gpt-4o-mini~expire")]
    lines.append(openai_line("ok-2", text="something else"))
    upload = client.post("/v1/files", files={"file": ("in.jsonl", jsonl(lines))}, data={"purpose": "batch"})
    assert upload.status_code == 200 and upload.json()["purpose"] == "batch"
    created = client.post(
        "/v1/batches",
        json={
            "input_file_id": upload.json()["id"],
            "endpoint": "/v1/chat/completions",
            "completion_window": "24h",
            "metadata": {"llmq_batch": "k1"},
        },
    ).json()
    done = client.get(f"/v1/batches/{created['id']}").json()
    assert done["status"] == "completed" and done["metadata"] == {"llmq_batch": "k1"}
    output = [json.loads(x) for x in client.get(f"/v1/files/{done['output_file_id']}/content").content.splitlines()]
    errors = [json.loads(x) for x in client.get(f"/v1/files/{done['error_file_id']}/content").content.splitlines()]
    assert sorted(x["custom_id"] for x in output + errors) == ["bad", "late", "ok-1", "ok-2"]
    by_id = {x["custom_id"]: x for x in output + errors}
    assert by_id["bad"]["response"]["status_code"] == 503 and by_id["bad"]["response"]["body"]["error"]["type"]
    assert by_id["late"]["error"]["code"] == "batch_expired"
    assert by_id["ok-1"]["response"]["body"]["usage"]["completion_tokens"] == 10
    stats = client.get("/_sim/stats").json()
    # batch lines are not live calls
    assert stats["by_path"].get("/v1/chat/completions", 0) == 0
    assert stats["batches"]["openai_batches"] == 1 and stats["batches"]["files"] == 1


def test_a_batch_line_is_the_answer_a_live_call_gets(client: httpx2.Client) -> None:
    line = openai_line("one", text="the same prompt")
    live = client.post("/v1/chat/completions", json=line["body"]).json()
    upload = client.post("/v1/files", files={"file": ("in.jsonl", jsonl([line]))}, data={"purpose": "batch"}).json()
    batch = client.post(
        "/v1/batches",
        json={"input_file_id": upload["id"], "endpoint": "/v1/chat/completions", "completion_window": "24h"},
    ).json()
    done = client.get(f"/v1/batches/{batch['id']}").json()
    body = json.loads(client.get(f"/v1/files/{done['output_file_id']}/content").content)["response"]["body"]
    assert body["choices"][0]["message"] == live["choices"][0]["message"]
    assert body["usage"] == live["usage"]


def test_anthropic_batch_over_http_results_in_any_order(client: httpx2.Client) -> None:
    params = {"model": "claude-x", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}
    requests = [{"custom_id": f"r{i}", "params": params} for i in range(20)]
    requests.append({"custom_id": "bad", "params": {**params, "model": "claude-x~400"}})
    assert client.post("/v1/messages/batches", json={"requests": requests}).status_code == 400  # no version header
    created = client.post("/v1/messages/batches", json={"requests": requests}, headers=ANTHROPIC).json()
    assert created["type"] == "message_batch" and created["processing_status"] in ("in_progress", "ended")
    ended = client.get(f"/v1/messages/batches/{created['id']}", headers=ANTHROPIC).json()
    assert ended["processing_status"] == "ended" and ended["request_counts"]["errored"] == 1
    raw = client.get(ended["results_url"], headers=ANTHROPIC).content.splitlines()
    results = [json.loads(x) for x in raw]
    ids = [r["custom_id"] for r in results]
    assert sorted(ids) == sorted(r["custom_id"] for r in requests) and ids != [r["custom_id"] for r in requests]
    bad = next(r for r in results if r["custom_id"] == "bad")["result"]
    assert bad["type"] == "errored" and bad["error"]["error"]["type"] == "invalid_request_error"
    good = next(r for r in results if r["custom_id"] == "r0")["result"]["message"]
    assert good["usage"]["service_tier"] == "batch" and good["content"][0]["type"] == "text"


def test_listings_page_newest_first(client: httpx2.Client) -> None:
    ids = []
    for i in range(3):
        upload = client.post(
            "/v1/files", files={"file": (f"f{i}.jsonl", jsonl([openai_line("x")]))}, data={"purpose": "batch"}
        ).json()
        ids.append(
            client.post(
                "/v1/batches",
                json={"input_file_id": upload["id"], "endpoint": "/v1/chat/completions", "completion_window": "24h"},
            ).json()["id"]
        )
    first = client.get("/v1/batches", params={"limit": 2}).json()
    assert [b["id"] for b in first["data"]] == ids[:0:-1] and first["has_more"]
    rest = client.get("/v1/batches", params={"limit": 2, "after": first["last_id"]}).json()
    assert [b["id"] for b in rest["data"]] == ids[:1] and not rest["has_more"]
    files = client.get("/v1/files", params={"purpose": "batch"}).json()["data"]
    assert [f["filename"] for f in files] == ["f2.jsonl", "f1.jsonl", "f0.jsonl"]


def test_a_held_upload_reply_leaves_a_file_the_client_never_learned_of(
    client: httpx2.Client, sim: SimulatorThread
) -> None:
    client.post("/_sim/config", json={"batch_upload_delay_s": 5.0})
    with httpx2.Client(base_url=sim.url, timeout=0.3) as impatient, pytest.raises(httpx2.ReadTimeout):
        impatient.post(
            "/v1/files", files={"file": ("lost.jsonl", jsonl([openai_line("x")]))}, data={"purpose": "batch"}
        )
    names = [f["filename"] for f in client.get("/v1/files").json()["data"]]
    assert names == ["lost.jsonl"]


def test_errors_come_in_each_apis_shape(client: httpx2.Client) -> None:
    missing = client.get("/v1/batches/batch_nope")
    assert missing.status_code == 404 and missing.json()["error"]["message"].startswith("No such batch")
    gone = client.get("/v1/messages/batches/msgbatch_nope", headers=ANTHROPIC)
    assert gone.status_code == 404 and gone.json()["error"]["type"] == "not_found_error"
    bad = client.post(
        "/v1/batches", json={"input_file_id": "file-x", "endpoint": "/v1/embeddings", "completion_window": "24h"}
    )
    assert bad.status_code == 400 and "endpoint" in bad.json()["error"]["message"]

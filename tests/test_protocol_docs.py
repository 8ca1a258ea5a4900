"""docs/protocol.md is true: its schemas are what the models generate, its examples run, and a program
in another language (Node.js, no packages) that follows it consumes a job's events correctly."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import jsonschema
import pytest
import redis

from producers import Client
from producers.gateway import GatewaySettings, create_gateway
from producers.gateway.server import GatewayThread
from workers.contract import JobKeys
from workers.contract.history import HistoryKeys, day_of
from workers.contract.schemas import json_schemas, rendered

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "protocol.md"
SCHEMAS = ROOT / "docs" / "schemas"
TOKEN = "tok-docs-2b7f91c0"
_EXAMPLE = re.compile(r"<!-- example -->\n((?:<!-- expect: [^\n]* -->\n)*)```bash\n(.*?)```", re.S)


def examples() -> list[tuple[list[str], str]]:
    found = [
        (re.findall(r"<!-- expect: (.*) -->", expects), code) for expects, code in _EXAMPLE.findall(DOC.read_text())
    ]
    assert len(found) >= 7, "docs/protocol.md lost its examples"
    return found


def test_checked_in_schemas_are_the_generated_ones() -> None:
    generated = json_schemas()
    assert sorted(p.name for p in SCHEMAS.glob("*.json")) == sorted(generated)
    for name, schema in generated.items():
        assert (SCHEMAS / name).read_text() == rendered(schema), (
            f"docs/schemas/{name} is stale: run 'llmq schemas --write docs/schemas' and commit it"
        )
        jsonschema.Draft202012Validator.check_schema(schema)
        assert f"schemas/{name}" in DOC.read_text()  # the doc names every schema
    # the command integrators (and anyone who changes the contract) run says the same
    check = subprocess.run(
        [sys.executable, "-m", "llmq.cli", "schemas", "--check", str(SCHEMAS)],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert check.returncode == 0, check.stderr


@pytest.fixture
def gw(redis_url: str) -> Iterator[GatewayThread]:
    with GatewayThread(create_gateway(GatewaySettings(redis_url=redis_url, tokens={TOKEN: "team-docs"}))) as server:
        yield server


def _validator(name: str) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(json.loads((SCHEMAS / name).read_text()))


@pytest.mark.skipif(
    shutil.which("redis-cli") is None or shutil.which("curl") is None, reason="needs redis-cli and curl"
)
def test_every_example_runs(worker, gw: GatewayThread, redis_url: str, tmp_path: Path) -> None:
    parts = urlsplit(redis_url)
    blocks = examples()
    script = ["set -euo pipefail"]
    for index, (_, code) in enumerate(blocks):
        script += [f"echo '@@example {index}@@'", code]
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("LLMQ_")},
        "GW": gw.url,
        "TOKEN": TOKEN,
        "REDIS": f"-h {parts.hostname} -p {parts.port or 6379}" + (f" -n {parts.path[1:]}" if parts.path[1:] else ""),
    }
    done = subprocess.run(
        ["bash", "-c", "\n".join(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 0, f"an example failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    outputs = re.split(r"@@example \d+@@\n", done.stdout)[1:]
    assert len(outputs) == len(blocks)
    job_id = outputs[0].strip().splitlines()[-1]
    for (expects, code), output in zip(blocks, outputs, strict=True):
        for expected in expects:
            assert expected in output, f"example expects {expected!r}:\n{code}\n--- printed:\n{output[-2000:]}"
    # what the examples read from Redis is what the schemas say
    client = redis.Redis.from_url(redis_url)
    _validator("result.json").validate(json.loads(client.get(JobKeys(job_id).result)))  # type: ignore[arg-type]
    events = client.xrange(JobKeys(job_id).events)
    assert [int(i.decode().split("-")[0]) for i, _ in events] == list(range(len(events)))
    for _, fields in events:
        _validator("event.json").validate(json.loads(fields[b"e"]))
    summary = client.hget(HistoryKeys(day_of(__import__("time").time())).jobs, job_id)
    _validator("job_summary.json").validate(json.loads(summary))  # type: ignore[arg-type]


def _node() -> str:
    node = shutil.which("node") or shutil.which("nodejs")
    if node is None:
        if os.environ.get("CI") == "true":
            pytest.fail("Node.js is missing (.ci/run installs nodejs)")
        pytest.skip("needs Node.js")
    return node


def test_a_node_program_follows_the_protocol(worker, client: Client, gw: GatewayThread) -> None:
    node = _node()
    for model, status, last in (
        ("openai:gpt-4o-mini", "succeeded", "done"),
        ("openai:gpt-4o-mini~400*", "failed", "error"),
    ):
        job_id = client.submit(
            {"model": model, "tenant": "team-docs", "messages": [{"role": "user", "content": "hi"}]}
        ).id
        done = subprocess.run(
            [node, str(ROOT / "tests" / "protocol" / "consume_sse.mjs"), f"{gw.url}/v1/jobs/{job_id}/events", TOKEN,
             str(SCHEMAS / "event.json")],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        seen = json.loads(done.stdout.strip().splitlines()[-1])
        assert seen["seqs_in_order"] and seen["terminal"] == 1 and seen["result_status"] == status
        assert seen["types"][0] == "start" and seen["types"][-1] == last
        if status == "succeeded":
            assert "delta" in seen["types"] and "usage" in seen["types"]


def test_a_node_program_follows_a_job_from_redis_live_and_replayed(worker, client: Client, redis_url: str) -> None:
    """The Stream + live channel recipe of docs/protocol.md, in Node with no packages
    (``tests/protocol/follow_redis.mjs``): started before the job exists it follows it live; started
    after the end from seq 2 it replays the rest; both see exactly the Stream's events, in order."""
    node = _node()
    port = str(urlsplit(redis_url).port)
    assert urlsplit(redis_url).path in ("", "/", "/0")  # the program reads database 0
    job_id = "team-docs:node-redis-1"
    follower = subprocess.Popen(
        [node, str(ROOT / "tests" / "protocol" / "follow_redis.mjs"), port, job_id, "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        # the first token a second late: the follower is subscribed by then and takes it live
        job = {"id": job_id, "model": "openai:gpt-4o-mini~slow@1", "tenant": "team-docs"}
        client.submit({**job, "messages": [{"role": "user", "content": "hi"}]})
        out, err = follower.communicate(timeout=120)
    finally:
        follower.kill()
    assert follower.returncode == 0, err
    live = json.loads(out.strip().splitlines()[-1])
    stream = [json.loads(f[b"e"]) for _, f in client.redis.xrange(JobKeys(job_id).events)]
    assert live["seqs"] == [e["seq"] for e in stream] == list(range(len(stream)))
    assert live["types"] == [e["type"] for e in stream] and live["types"][-1] == "done"
    assert live["result_status"] == "succeeded" and "delta" in live["types"]
    replayed = subprocess.run(
        [node, str(ROOT / "tests" / "protocol" / "follow_redis.mjs"), port, job_id, "2"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert replayed.returncode == 0, replayed.stderr
    assert json.loads(replayed.stdout.strip().splitlines()[-1])["seqs"] == list(range(2, len(stream)))


def test_the_check_names_a_stale_schema(tmp_path: Path) -> None:
    for path in SCHEMAS.glob("*.json"):
        (tmp_path / path.name).write_text(path.read_text())
    (tmp_path / "result.json").write_text("{}\n")
    check = subprocess.run(
        [sys.executable, "-m", "llmq.cli", "schemas", "--check", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert check.returncode == 1 and "result.json" in check.stderr and "--write" in check.stderr

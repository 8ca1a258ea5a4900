"""The batcher SIGKILLed mid-step, inside a real worker process, then a new worker: no provider batch
sent twice, every line answered and ended once.

The batcher is the worker's own thread (``[batch] batcher = true``, the default). The simulator holds
the reply of an upload (OpenAI) or of a batch creation (Anthropic) after the object exists, or
answers the batch over a few seconds, so the worker is killed while the step is under way: the
killed batcher never learned the file's or the batch's id, or was polling. The new worker's batcher
takes the lease once the dead one's ran out (``lock_s``) and finds what the provider already has.
No timing is asserted: the waits are hang guards.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
import redis

from llmq.devstack import LocalStack
from producers import Client
from producers.settings import ProducerSettings
from tests.support.waits import until
from workers.contract import JobKeys
from workers.jobs.batchstate import BatchStore

pytestmark = pytest.mark.slow

HANG_GUARD_S = 240
LINES = 20
CONFIG = f"""
[batch]
max_age_s = 3600
max_lines = {LINES}
poll_s = 0.2
lock_s = 3
"""


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[LocalStack]:
    config = tmp_path / "llmq.toml"
    config.write_text(CONFIG)
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMQ_")}
    env["LLMQ_CONFIG"] = str(config)
    (tmp_path / "logs").mkdir()
    with LocalStack(log_dir=str(tmp_path / "logs"), env=env) as s:
        s.start_redis()
        s.start_simulator()
        yield s


def sim_config(stack: LocalStack, **changes: Any) -> None:
    httpx2.post(f"{stack.simulator_url}/_sim/config", json=changes).raise_for_status()


def sim_batches(stack: LocalStack) -> dict[str, Any]:
    return dict(httpx2.get(f"{stack.simulator_url}/_sim/stats").json()["batches"])


def batch_states(r: redis.Redis) -> list[str]:
    states = []
    for key in r.scan_iter(match=BatchStore.batch_hash("*")):
        if key.count(b":") == 3:  # the batch hashes, not their :jobs/:lines lists
            states.append((r.hget(key, "state") or b"").decode())
    return states


@pytest.mark.parametrize(
    ("step", "model"),
    [
        ("upload", "openai:gpt-4o-mini"),  # killed while the file's reply is held
        ("create", "anthropic:claude-sonnet-4-5"),  # killed while the batch's creation reply is held
        ("poll", "openai:gpt-4o-mini"),  # killed while the batch runs
    ],
)
def test_a_batcher_killed_mid_step_sends_no_batch_twice_and_loses_no_line(
    stack: LocalStack, step: str, model: str
) -> None:
    held = {"upload": {"batch_upload_delay_s": 60.0}, "create": {"batch_create_delay_s": 60.0}}.get(step, {})
    # polling: long enough that the batch is still running when the worker is killed, however loaded the machine
    sim_config(stack, batch_processing_s=10.0 if step == "poll" else 0.0, **held)
    first = stack.start_worker(pool="threads", concurrency=4, name="worker1")
    stack.wait_for_workers(1, timeout=60)
    r = redis.Redis.from_url(stack.redis_url)
    client = Client(settings=ProducerSettings(redis_url=stack.redis_url))
    try:
        ids = [
            client.submit({"model": model, "messages": [{"role": "user", "content": f"line {i}"}], "batch": "allow"}).id
            for i in range(LINES)
        ]
        kind = "anthropic_batches" if model.startswith("anthropic") else "openai_batches"
        if step == "upload":
            until(lambda: sim_batches(stack)["files"] == 1, "the upload reached the provider", HANG_GUARD_S)
        elif step == "create":
            until(lambda: sim_batches(stack)[kind] == 1, "the batch was created", HANG_GUARD_S)
        else:
            until(lambda: batch_states(r) == ["running"], "the batch running", HANG_GUARD_S)
        assert not any(r.exists(JobKeys(i).result) for i in ids)
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(30)
        sim_config(stack, batch_upload_delay_s=0.0, batch_create_delay_s=0.0)
        stack.start_worker(pool="threads", concurrency=4, name="worker2")
        until(lambda: all(r.exists(JobKeys(i).result) for i in ids), "every line ended", HANG_GUARD_S, poll_s=0.2)
        stats = sim_batches(stack)
        assert stats[kind] == 1  # no batch sent twice
        assert stats["files"] == (1 if kind == "openai_batches" else 0)  # nor a file uploaded twice
        assert stats["lines"] == LINES and stats["lines_answered_twice"] == 0
        for job_id in ids:
            result = client.result(job_id, timeout=10)
            assert result.status == "succeeded", result.error
            events = list(client.stream(job_id, timeout=10))
            assert [e.type for e in events].count("start") == 1
            assert sum(e.type in ("done", "error", "cancelled") for e in events) == 1
        live = httpx2.get(f"{stack.simulator_url}/_sim/stats").json()
        assert live["requests"] == 0, json.dumps(live)[:500]  # every line answered by the batch
        until(lambda: batch_states(r) == ["finished"], "the batch finished", HANG_GUARD_S)
    finally:
        client.close()
        r.close()

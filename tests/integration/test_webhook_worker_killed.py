"""A worker process SIGKILLed while its deliverer waits on a webhook receiver: the delivery's lease
lapses, another worker process delivers it under the same ``webhook-id``, and exactly one attempt
(the success) is in the job's delivery log. No timing is asserted: the waits are hang guards."""

from __future__ import annotations

import base64
import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from llmq.devstack import LocalStack
from producers import Client
from tests.support.receiver import Receiver
from tests.support.waits import until
from workers.contract import JobKeys
from workers.contract.webhooks import verify

pytestmark = pytest.mark.slow

SECRET = "whsec_" + base64.b64encode(b"killed-worker-webhook-secret-32!").decode()
HANG_GUARD_S = 120


@pytest.fixture
def stack(redis_server_url: str, tmp_path: Path) -> Iterator[LocalStack]:
    url = redis_server_url.replace("/0", "/7")
    redis.Redis.from_url(url).flushdb()
    config = tmp_path / "llmq.toml"
    # an attempt's lease is 3 x timeout_s + 5 s: 11 s here, so the test waits about that long
    config.write_text('[webhooks]\nallow_networks = ["127.0.0.0/8"]\ntimeout_s = 2\nbackoff_s = [0.1]\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMQ_")}
    env.update(LLMQ_REDIS_URL=url, LLMQ_WEBHOOK_SECRET=SECRET, LLMQ_CONFIG=str(config))
    with LocalStack(env=env) as s:
        s.start_redis()
        s.start_simulator()
        yield s


def test_a_delivery_cut_by_a_killed_worker_is_made_later_once(stack: LocalStack) -> None:
    # the first attempt hangs (the receiver holds the connection); every later one succeeds
    with Receiver(lambda _id, nth: 0 if nth == 1 else 200) as receiver, Client(stack.redis_url) as client:
        victim = stack.start_worker(pool="gevent", concurrency=8, name="w1")
        stack.wait_for_workers(1)
        job_id = client.submit(
            {"model": "openai:gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "webhook": receiver.url}
        ).id
        assert client.result(job_id, timeout=HANG_GUARD_S).status == "succeeded"
        until(lambda: receiver.hanging == 1, "the first attempt reached the receiver", HANG_GUARD_S)
        os.killpg(victim.pid, signal.SIGKILL)
        victim.wait(30)

        stack.start_worker(pool="threads", concurrency=4, name="w2")
        until(lambda: len(receiver.answered(200)) == 1, "the delivery made by the other worker", HANG_GUARD_S)

    first, second = receiver.deliveries
    assert first.status is None and second.status == 200
    assert first.headers["webhook-id"] == second.headers["webhook-id"] == f"msg_{job_id}"
    assert first.body == second.body
    verify(SECRET, second.headers, second.body)
    keys = JobKeys(job_id)
    until(lambda: client.redis.hget(keys.webhook, "state") == b"delivered", "the delivery recorded", 30)
    log = [json.loads(e) for e in client.redis.lrange(keys.webhook_log, 0, -1)]
    # the killed attempt left nothing; the one success is attempt 1 in the log
    assert [(e["attempt"], e["outcome"], e.get("status")) for e in log] == [(1, "delivered", 200)]

"""One delivery attempt at a time (``WebhookDeliverer.attempt``) on a real Redis and real sockets:
what each receiver answer does to the record, the log and the due set, with an injected clock."""

from __future__ import annotations

import base64
import socket
import threading
from collections.abc import Iterator

import pytest
import redis
from prometheus_client import CollectorRegistry

from tests.support.receiver import Receiver
from workers.contract import CompletionJob, CompletionResult, JobKeys
from workers.contract.webhooks import DUE_KEY
from workers.jobs.webhooks import WebhookQueue
from workers.routes import WebhooksConfig
from workers.runtime.webhooks import WebhookDeliverer, WebhookMetrics

SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()


class Clock:
    def __init__(self) -> None:
        self.now = 1_765_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def garbage_server() -> Iterator[str]:
    """Answers every connection with a line that is not HTTP."""
    server = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            with conn:
                conn.recv(65536)
                conn.sendall(b"garbage\r\n\r\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}/hook"
    stop.set()
    thread.join(2)
    server.close()


def _queue(client: redis.Redis, url: str, clock: Clock) -> str:
    job = CompletionJob(model="openai:gpt-4o", messages=[{"role": "user", "content": "hi"}], webhook=url)
    result = CompletionResult(id=job.id, status="succeeded", content="hello")
    writes = WebhookQueue(WebhooksConfig(), keep_s=3600, clock=clock).writes(
        JobKeys(job.id), job, "succeeded", result.model_dump_json()
    )
    for write in writes:
        client.execute_command(*write)
    return job.id


def _deliverer(client: redis.Redis, clock: Clock, **config: object) -> WebhookDeliverer:
    return WebhookDeliverer(
        client,
        WebhooksConfig(allow_networks=["127.0.0.0/8"], backoff_s=[60.0], timeout_s=5, **config),  # type: ignore[arg-type]
        metrics=WebhookMetrics(CollectorRegistry()),
        env={"LLMQ_WEBHOOK_SECRET": SECRET},
        clock=clock,
    )


def test_a_malformed_answer_is_retried_then_given_up_after_the_window(
    redis_client: redis.Redis, garbage_server: str
) -> None:
    clock = Clock()
    job_id = _queue(redis_client, garbage_server, clock)
    deliverer = _deliverer(redis_client, clock, max_age_s=300)
    assert deliverer.attempt(job_id) == "retry"
    due = redis_client.zscore(DUE_KEY, job_id)
    assert due is not None and clock.now + 48 <= due <= clock.now + 72  # 60 s of backoff, +-20 % jitter
    record = {k.decode(): v.decode() for k, v in redis_client.hgetall(JobKeys(job_id).webhook).items()}
    assert record["state"] == "pending" and record["attempts"] == "1" and "BadStatusLine" in record["last_error"]
    clock.now += 400  # past max_age_s: this attempt is the last
    assert deliverer.attempt(job_id) == "failed"
    assert redis_client.zscore(DUE_KEY, job_id) is None
    assert redis_client.hget(JobKeys(job_id).webhook, "state") == b"failed"
    assert redis_client.llen(JobKeys(job_id).webhook_log) == 2
    assert deliverer.attempt(job_id) == "gone"  # a stray due entry of an ended delivery is dropped


def test_a_2xx_ends_the_delivery_and_the_take_script_leases_due_ones(redis_client: redis.Redis) -> None:
    clock = Clock()
    with Receiver(lambda _id, _n: 204) as receiver:
        job_id = _queue(redis_client, receiver.url, clock)
        deliverer = _deliverer(redis_client, clock)
        # taking a due delivery re-scores it to the lease's end, so no other process takes it meanwhile
        taken = deliverer._take(keys=[DUE_KEY], args=[clock.now, clock.now + 100, 10])
        assert [t.decode() for t in taken] == [job_id]
        assert redis_client.zscore(DUE_KEY, job_id) == clock.now + 100
        assert deliverer._take(keys=[DUE_KEY], args=[clock.now, clock.now + 100, 10]) == []
        assert deliverer.attempt(job_id) == "delivered"
    assert redis_client.zscore(DUE_KEY, job_id) is None
    assert redis_client.hget(JobKeys(job_id).webhook, "state") == b"delivered"
    assert len(receiver.answered(204)) == 1

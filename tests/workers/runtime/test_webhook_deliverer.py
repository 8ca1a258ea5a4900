"""One delivery attempt at a time (``WebhookDeliverer.attempt``) on a real Redis and real sockets:
what each receiver answer does to the record, the log and the due set, with an injected clock."""

from __future__ import annotations

import base64
import datetime as dt
import json
import socket
import threading
from collections.abc import Iterator

import pytest
import redis
import standardwebhooks
from prometheus_client import CollectorRegistry

from tests.support.receiver import Receiver
from tests.support.waits import until
from workers.contract import CompletionJob, CompletionResult, JobKeys
from workers.contract.webhooks import DUE_KEY, verify
from workers.jobs.webhooks import WebhookQueue
from workers.routes import WebhooksConfig
from workers.runtime.webhooks import WebhookDeliverer, WebhookMetrics, retry_after_s

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


def _deliverer(client: redis.Redis, clock: Clock, *, secret: str = SECRET, **config: object) -> WebhookDeliverer:
    settings: dict[str, object] = {"allow_networks": ["127.0.0.0/8"], "backoff_s": [60.0], "timeout_s": 5, **config}
    return WebhookDeliverer(
        client,
        WebhooksConfig.model_validate(settings),
        metrics=WebhookMetrics(CollectorRegistry()),
        env={"LLMQ_WEBHOOK_SECRET": secret},
        clock=clock,
    )


def _log(client: redis.Redis, job_id: str) -> list[dict[str, object]]:
    return [json.loads(e) for e in client.lrange(JobKeys(job_id).webhook_log, 0, -1)]


def _state(client: redis.Redis, job_id: str) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in client.hgetall(JobKeys(job_id).webhook).items()}


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


def test_a_410_ends_the_delivery_without_retries(redis_client: redis.Redis) -> None:
    """Standard Webhooks: 410 Gone says the receiver wants no more deliveries; retrying would ignore it."""
    clock = Clock()
    with Receiver(lambda _id, _n: 410) as receiver:
        job_id = _queue(redis_client, receiver.url, clock)
        assert _deliverer(redis_client, clock).attempt(job_id) == "failed"
    assert redis_client.zscore(DUE_KEY, job_id) is None
    record = _state(redis_client, job_id)
    assert record["state"] == "failed" and record["last_status"] == "410" and "410 Gone" in record["last_error"]
    assert [e["outcome"] for e in _log(redis_client, job_id)] == ["failed"]
    assert len(receiver.deliveries) == 1


@pytest.mark.parametrize(
    ("status", "retry_after", "at_least", "at_most"),
    [
        (429, "600", 600, 600 + 1),  # longer than the backoff step (60 s, +-20 %): the receiver's wins
        (503, "86400", 900, 900 + 1),  # capped at the longest backoff step: a huge value does not end it early
        (503, "5", 48, 72),  # shorter than the backoff: the backoff stands
        (429, "soon", 48, 72),  # unreadable: ignored
    ],
)
def test_a_receivers_retry_after_delays_the_next_attempt(
    redis_client: redis.Redis, status: int, retry_after: str, at_least: float, at_most: float
) -> None:
    clock = Clock()
    with Receiver(lambda _id, _n: (status, {"retry-after": retry_after})) as receiver:
        job_id = _queue(redis_client, receiver.url, clock)
        assert _deliverer(redis_client, clock, backoff_s=[60.0, 900.0]).attempt(job_id) == "retry"
    due = redis_client.zscore(DUE_KEY, job_id)
    assert due is not None and clock.now + at_least <= due <= clock.now + at_most
    assert _state(redis_client, job_id)["state"] == "pending"


def test_a_retry_after_date_is_read_as_seconds_from_now() -> None:
    now = 1_765_000_000.0
    date = dt.datetime.fromtimestamp(now + 120, dt.UTC).strftime("%a, %d %b %Y %H:%M:%S GMT")
    assert retry_after_s(date, now) == 120
    assert retry_after_s("30", now) == 30
    assert retry_after_s(None, now) is None and retry_after_s("later", now) is None


@pytest.fixture
def trickling_server() -> Iterator[tuple[str, list[int]]]:
    """Starts an answer's status line, then sends it on one byte every 0.2 s, never reaching the
    status (each read is quick: only a deadline over the whole exchange ends it). Yields the URL and
    the bytes trickled per answer."""
    server = socket.create_server(("127.0.0.1", 0))
    sent: list[int] = []
    stop = threading.Event()

    def answer(conn: socket.socket) -> None:
        with conn:
            conn.recv(65536)
            count = 0
            try:
                conn.sendall(b"HTTP/1.1")
                while count < 1000 and not stop.wait(0.2):
                    conn.sendall(b" ")
                    count += 1
            except OSError:
                pass
            sent.append(count)

    def serve() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            threading.Thread(target=answer, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}/hook", sent
    stop.set()
    thread.join(2)
    server.close()


def test_a_receiver_trickling_its_answer_is_cut_off_at_the_timeout(
    redis_client: redis.Redis, trickling_server: tuple[str, list[int]]
) -> None:
    """The socket's timeout bounds each read only: the attempt's own deadline ends it, so a slow
    receiver cannot hold a deliverer's slot (or outlive the lease and be attempted twice at once)."""
    url, sent = trickling_server
    clock = Clock()
    job_id = _queue(redis_client, url, clock)
    assert _deliverer(redis_client, clock, timeout_s=1).attempt(job_id) == "retry"
    assert "no complete answer within 1 s" in _state(redis_client, job_id)["last_error"]
    until(lambda: len(sent) == 1, "the server saw the connection end", 30)
    assert sent[0] < 1000  # cut off long before the answer was complete


def test_an_attempt_that_outlived_its_lease_does_not_log_a_second_success(redis_client: redis.Redis) -> None:
    """Two attempts of one delivery at once (the first outlived its lease and another process took it):
    both reach the receiver with the same webhook-id, exactly one success is recorded and logged."""
    clock = Clock()
    first_in = threading.Event()
    release_first = threading.Event()

    def answer(_id: str, nth: int) -> int:
        if nth == 1:
            first_in.set()
            release_first.wait(60)
        return 200

    with Receiver(answer) as receiver:
        job_id = _queue(redis_client, receiver.url, clock)
        slow, fast = _deliverer(redis_client, clock, timeout_s=90), _deliverer(redis_client, clock, timeout_s=90)
        outcomes: list[str] = []
        thread = threading.Thread(target=lambda: outcomes.append(slow.attempt(job_id)))
        thread.start()
        assert first_in.wait(60)
        assert fast.attempt(job_id) == "delivered"
        release_first.set()
        thread.join(60)
    assert outcomes == ["superseded"]
    assert [d.status for d in receiver.deliveries] == [200, 200]
    assert len({d.headers["webhook-id"] for d in receiver.deliveries}) == 1
    assert [e["outcome"] for e in _log(redis_client, job_id)] == ["delivered"]
    assert _state(redis_client, job_id)["attempts"] == "1"
    delivered = [d.metrics.attempts.labels("delivered")._value.get() for d in (slow, fast)]
    assert delivered == [0, 1]


def test_rotated_secrets_sign_every_attempt_with_each(redis_client: redis.Redis) -> None:
    """A secret being rotated is configured as "new old": the header carries both signatures (the
    specification's space-separated form), so receivers holding either secret verify it."""
    new = "whsec_" + base64.b64encode(b"the-new-secret-of-32-bytes-long!").decode()
    clock = Clock()
    clock.now = dt.datetime.now(dt.UTC).timestamp()  # receivers check the timestamp's age
    with Receiver(lambda _id, _n: 200) as receiver:
        job_id = _queue(redis_client, receiver.url, clock)
        assert _deliverer(redis_client, clock, secret=f"{new} {SECRET}").attempt(job_id) == "delivered"
    (delivery,) = receiver.deliveries
    assert len(delivery.headers["webhook-signature"].split(" ")) == 2
    for secret in (new, SECRET):
        standardwebhooks.Webhook(secret).verify(delivery.body, delivery.headers)
        verify(secret, delivery.headers, delivery.body)
    other = "whsec_" + base64.b64encode(b"a-third-secret-nobody-signs-with").decode()
    with pytest.raises(standardwebhooks.webhooks.WebhookVerificationError):
        standardwebhooks.Webhook(other).verify(delivery.body, delivery.headers)


@pytest.mark.parametrize("secret", ["whsec_" + base64.b64encode(b"short").decode(), "not base64!"])
def test_an_unusable_secret_is_refused_not_retried(redis_client: redis.Redis, secret: str) -> None:
    clock = Clock()
    with Receiver() as receiver:
        job_id = _queue(redis_client, receiver.url, clock)
        assert _deliverer(redis_client, clock, secret=secret).attempt(job_id) == "refused"
    assert not receiver.deliveries and redis_client.zscore(DUE_KEY, job_id) is None
    assert "LLMQ_WEBHOOK_SECRET" in _state(redis_client, job_id)["last_error"]


def test_backlog_gauges_count_queued_and_due_deliveries(redis_client: redis.Redis) -> None:
    clock = Clock()
    jobs = [_queue(redis_client, "http://127.0.0.1:9/hook", clock) for _ in range(3)]
    redis_client.zadd(DUE_KEY, {jobs[0]: clock.now + 600}, xx=True)  # retrying later
    deliverer = _deliverer(redis_client, clock)
    deliverer._read_backlog()
    assert deliverer.metrics.queued._value.get() == 3
    assert deliverer.metrics.due._value.get() == 2


def test_a_dead_receiver_is_retried_for_24_hours_then_given_up(redis_client: redis.Redis) -> None:
    """The shipped policy (backoff 5 s ... 8 h, max_age_s 24 h) on a fake clock: attempts keep coming
    while the next one would still fall inside the day after the job ended, then the delivery fails."""
    clock = Clock()
    created = clock.now
    with Receiver(lambda _id, _n: 500) as receiver:
        job_id = _queue(redis_client, receiver.url, clock)
        deliverer = WebhookDeliverer(
            redis_client,
            WebhooksConfig(allow_networks=["127.0.0.0/8"]),
            metrics=WebhookMetrics(CollectorRegistry()),
            env={"LLMQ_WEBHOOK_SECRET": SECRET},
            clock=clock,
        )
        outcomes = []
        while True:
            outcome = deliverer.attempt(job_id)
            outcomes.append(outcome)
            due = redis_client.zscore(DUE_KEY, job_id)
            if due is None:
                break
            assert due <= created + 86_400  # never scheduled past the window
            clock.now = due
    assert outcomes[-1] == "failed" and set(outcomes[:-1]) == {"retry"}
    assert 10 <= len(outcomes) <= 16  # 9 growing steps, then 8 h (+-20 %) apart
    assert clock.now - created > 86_400 - 8 * 3600 * 1.2  # the last attempt was within the last step
    assert (
        len(receiver.deliveries) == len(outcomes) and len({d.headers["webhook-id"] for d in receiver.deliveries}) == 1
    )
    record = _state(redis_client, job_id)
    assert record["state"] == "failed" and record["attempts"] == str(len(outcomes))

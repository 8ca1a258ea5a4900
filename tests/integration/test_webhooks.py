"""Webhooks end to end: jobs through a real worker, deliveries to a real HTTP receiver on 127.0.0.1.

The worker's config allows loopback (``allow_networks``) except where a test checks the refusal;
retries back off for milliseconds instead of minutes (``backoff_s``).
"""

from __future__ import annotations

import base64
import json
from collections import Counter
from pathlib import Path

import pytest
import standardwebhooks

from producers import Client, InvalidJobError
from producers.history import JobHistory
from tests.support.brokers import Broker
from tests.support.receiver import Receiver
from tests.support.waits import until
from workers.contract import CompletionResult
from workers.contract.webhooks import WebhookSignatureError, verify
from workers.settings import Settings

SECRET = "whsec_" + base64.b64encode(b"llmq-test-webhook-secret-32byte!").decode()
JOB = {"model": "openai:gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}]}


@pytest.fixture
def allow_loopback() -> bool:
    return True


@pytest.fixture
def worker_settings(
    redis_url: str, broker: Broker, tmp_path: Path, allow_loopback: bool, monkeypatch: pytest.MonkeyPatch
) -> Settings:
    monkeypatch.setenv("LLMQ_WEBHOOK_SECRET", SECRET)
    monkeypatch.setenv("TEAM_HOOK_SECRET", SECRET)
    config = tmp_path / "llmq.toml"
    networks = '["127.0.0.0/8"]' if allow_loopback else "[]"
    config.write_text(
        f"[webhooks]\nallow_networks = {networks}\nbackoff_s = [0.01]\ntimeout_s = 120\nconcurrency = 4\n"
        '[webhooks.endpoints.team]\nurl = "http://127.0.0.1:9/unused"\nsecret_env = "TEAM_HOOK_SECRET"\n'
    )
    return Settings(
        redis_url=redis_url, broker_url=broker.url, queue=broker.queue, pool="threads", concurrency=16,
        coalesce_ms=20.0, claim_lease_s=10, config=str(config),
    )  # fmt: skip


def _delivery(client: Client, job_id: str) -> dict:
    found = JobHistory(client.redis).delivery(job_id)
    assert found is not None
    return found


def test_a_flaky_receiver_gets_one_valid_signed_delivery_per_job(worker, client: Client) -> None:
    with Receiver(lambda _id, nth: 500 if nth <= 3 else 200) as receiver:
        ids = [client.submit({**JOB, "webhook": receiver.url}).id for _ in range(5)]
        results = {i: client.result(i, timeout=60) for i in ids}
        until(lambda: len(receiver.answered(200)) >= 5, "every job's delivery", 60)
        until(lambda: all(_delivery(client, i)["state"] == "delivered" for i in ids), "delivered records", 30)

    ok = receiver.answered(200)
    assert len(ok) == 5 and len(receiver.answered(500)) == 15
    assert Counter(d.headers["webhook-id"] for d in receiver.deliveries) == {f"msg_{i}": 4 for i in ids}
    reference = standardwebhooks.Webhook(SECRET)
    for delivery in ok:
        payload = reference.verify(delivery.body, delivery.headers)  # the reference implementation agrees
        verify(SECRET, delivery.headers, delivery.body)
        job_id = delivery.headers["webhook-id"].removeprefix("msg_")
        assert payload["type"] == "job.succeeded"
        assert CompletionResult.model_validate(payload["data"]) == results[job_id]
    # every attempt of a job sent the same bytes under the same id, each signed anew
    bodies = {d.headers["webhook-id"]: set() for d in receiver.deliveries}
    for d in receiver.deliveries:
        bodies[d.headers["webhook-id"]].add(d.body)
    assert all(len(b) == 1 for b in bodies.values())
    with pytest.raises(WebhookSignatureError):
        verify(SECRET, ok[0].headers, ok[0].body + b" ")
    log = _delivery(client, ids[0])
    assert log["attempts"] == 4 and [a["outcome"] for a in log["log"]] == ["retry"] * 3 + ["delivered"]
    assert [a["status"] for a in log["log"]] == [500, 500, 500, 200]
    assert all(a["address"] == "127.0.0.1" for a in log["log"])


def test_a_hanging_receiver_does_not_slow_other_jobs(worker, client: Client) -> None:
    with Receiver(lambda _id, _n: 0) as receiver:  # accepts, reads, never answers
        hooked = [client.submit({**JOB, "webhook": receiver.url}).id for _ in range(8)]
        until(lambda: receiver.hanging >= 4, "the deliverer's slots stuck on the receiver", 60)
        plain = [client.submit(JOB).id for _ in range(20)]
        more_hooked = [client.submit({**JOB, "webhook": receiver.url}).id for _ in range(4)]
        for job_id in plain + more_hooked + hooked:
            assert client.result(job_id, timeout=60).status == "succeeded"
        # every job ended while the receiver held all four of the deliverer's slots, answering none
        assert receiver.hanging == 4 and not receiver.answered(200)  # (an attempt times out after 120 s)
        assert {_delivery(client, i)["state"] for i in hooked + more_hooked} == {"pending"}


@pytest.mark.parametrize("allow_loopback", [False])
def test_private_loopback_and_link_local_targets_are_refused(worker, client: Client) -> None:
    with Receiver() as receiver:
        targets = [
            "http://10.1.2.3/hook",
            "http://192.168.0.10:8080/hook",
            "http://169.254.169.254/latest/meta-data",
            "http://[::1]:9/hook",
            "http://[fd00::1]/hook",
            receiver.url,  # 127.0.0.1, not allowed by this worker's config
            receiver.url.replace("127.0.0.1", "localhost"),  # a name resolving to loopback
        ]
        ids = [client.submit({**JOB, "webhook": t}).id for t in targets]
        for job_id in ids:
            assert client.result(job_id, timeout=60).status == "succeeded"  # the job is unaffected
        until(lambda: all(_delivery(client, i)["state"] == "refused" for i in ids), "refusals", 30)
    assert receiver.deliveries == []
    for job_id in ids:
        record = _delivery(client, job_id)
        assert record["attempts"] == 1 and "refused" in record["last_error"]
        assert "address" not in record["log"][0]  # no connection was made
    with pytest.raises(InvalidJobError, match="credentials"):
        client.submit({**JOB, "webhook": "https://user:pw@hooks.example.com/x"})
    with pytest.raises(InvalidJobError, match="webhook"):
        client.submit({**JOB, "webhook": "ftp://hooks.example.com/x"})


def test_a_named_webhook_signs_with_its_own_secret(worker, client: Client, redis_url: str) -> None:
    """A name from the config resolves to its URL and secret; an unknown name is refused, the job unaffected."""
    handle = client.submit({**JOB, "webhook": "nope"})
    assert client.result(handle.id, timeout=60).status == "succeeded"
    until(lambda: _delivery(client, handle.id)["state"] == "refused", "refusal", 30)
    assert "no webhook named 'nope'" in _delivery(client, handle.id)["last_error"]
    named = client.submit({**JOB, "webhook": "team"})
    client.result(named.id, timeout=60)
    # the configured URL points at the discard port: the attempt fails to connect and is retried
    until(lambda: _delivery(client, named.id)["attempts"] >= 2, "retries to the named endpoint", 30)
    assert _delivery(client, named.id)["target"] == "team"
    assert json.dumps(_delivery(client, named.id)).count(SECRET) == 0

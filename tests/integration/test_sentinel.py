"""Redis Sentinel from one setting: a real master, a replica and three ``redis-server --sentinel``
processes; the master is SIGKILLed mid-run. Jobs submitted before and after the fail-over all end,
each exactly once, with the worker, the producer and the broker all following the new master."""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from llmq.devstack import LocalStack
from llmq.localredis import ManagedRedis, find_redis_server, free_port, ping
from producers import Client
from tests.support.waits import until
from workers.connections.redisurl import sentinel_target
from workers.contract import TERMINAL_EVENT_TYPES

pytestmark = pytest.mark.slow

MODEL = "openai:gpt-4o-mini"
HANG_GUARD_S = 300


class Sentinels:
    """Three sentinel processes watching ``mymaster`` (quorum 2), stopped by PID."""

    def __init__(self, master_port: int) -> None:
        self.ports = [free_port() for _ in range(3)]
        self.dir = Path(tempfile.mkdtemp(prefix="llmq-sentinel-"))
        self.procs: list[subprocess.Popen[bytes]] = []
        exe = find_redis_server()
        assert exe is not None
        for port in self.ports:
            conf = self.dir / f"sentinel-{port}.conf"
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {self.dir}\n"
                f"sentinel monitor mymaster 127.0.0.1 {master_port} 2\n"
                "sentinel down-after-milliseconds mymaster 1000\n"
                "sentinel failover-timeout mymaster 5000\n"
                "sentinel parallel-syncs mymaster 1\n"
            )
            log = open(self.dir / f"sentinel-{port}.log", "wb")  # noqa: SIM115 - owned by the child
            self.procs.append(
                subprocess.Popen(
                    [exe, str(conf), "--sentinel"], stdout=log, stderr=subprocess.STDOUT, start_new_session=True
                )
            )
            log.close()
        for port in self.ports:
            until(lambda port=port: ping(f"redis://127.0.0.1:{port}"), "a sentinel to answer", HANG_GUARD_S, 0.2)

    @property
    def url(self) -> str:
        return ";".join(f"sentinel://127.0.0.1:{p}" for p in self.ports) + "/0"

    def master_port(self) -> int | None:
        for port in self.ports:
            try:
                client = redis.Redis(port=port, socket_timeout=2)
                addr = client.execute_command("SENTINEL", "get-master-addr-by-name", "mymaster")
                client.close()
                if addr:
                    return int(addr[1])
            except redis.RedisError:
                continue
        return None

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(10)


@pytest.fixture
def sentinel_deployment() -> Iterator[tuple[ManagedRedis, ManagedRedis, Sentinels]]:
    master = ManagedRedis(durable=True).start()
    replica = ManagedRedis(durable=True, extra_args=["--replicaof", "127.0.0.1", str(master.port)]).start()
    until(
        lambda: redis.Redis(port=master.port).info("replication")["connected_slaves"] >= 1,
        "the replica to attach",
        HANG_GUARD_S,
        0.2,
    )
    sentinels = Sentinels(master.port)
    try:
        yield master, replica, sentinels
    finally:
        sentinels.stop()
        replica.stop()
        master.stop()


def test_sentinel_url_parsing() -> None:
    target = sentinel_target(
        "sentinel://:pw@h1:26379;sentinel://h2:26380/2",
        env={"LLMQ_REDIS_SENTINEL_MASTER": "primary", "LLMQ_REDIS_SENTINEL_PASSWORD": "sp"},
    )
    assert target is not None
    assert target.sentinels == (("h1", 26379), ("h2", 26380)) and target.db == 2
    assert target.master == "primary" and target.password == "pw" and target.sentinel_password == "sp"
    assert target.broker_url() == "sentinel://:pw@h1:26379;sentinel://:pw@h2:26380/2"
    assert target.transport_options() == {"master_name": "primary", "sentinel_kwargs": {"password": "sp"}}
    assert sentinel_target("redis://127.0.0.1:6379/0") is None


def test_jobs_before_and_after_a_failover_all_end(sentinel_deployment) -> None:  # type: ignore[no-untyped-def]
    master, replica, sentinels = sentinel_deployment
    url = sentinels.url
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMQ_")}
    env.update({"LLMQ_REDIS_URL": url, "LLMQ_REDIS_SENTINEL_MASTER": "mymaster", "LLMQ_MONTHLY_BUDGET_USD": "100"})
    with LocalStack(env=env) as stack:
        stack.redis_url = url  # the sentinels; LocalStack starts no Redis of its own
        stack.start_simulator(tokens_per_s=10)  # 20 tokens in ~2 s
        stack.start_worker(pool="threads", concurrency=8, name="w1")
        stack.wait_for_workers(1)
        with Client(url) as client:
            before = [f"before-{i}" for i in range(12)]
            for job_id in before:
                client.submit({"model": MODEL, "messages": [{"role": "user", "content": job_id}], "id": job_id})
            until(lambda: client.get_result(before[0]) is not None, "a first job to finish", HANG_GUARD_S, 0.2)

            master.kill()  # the master dies mid-run
            until(
                lambda: sentinels.master_port() == replica.port,
                "the sentinels to promote the replica",
                HANG_GUARD_S,
                0.2,
            )

            after = [f"after-{i}" for i in range(8)]
            for job_id in after:
                client.submit({"model": MODEL, "messages": [{"role": "user", "content": job_id}], "id": job_id})
            for job_id in before + after:
                result = client.result(job_id, timeout=HANG_GUARD_S)
                events = list(client.stream(job_id, timeout=30))
                terminal = [e for e in events if e.type in TERMINAL_EVENT_TYPES]
                assert len(terminal) == 1 and events[-1] is terminal[0], (job_id, [e.type for e in events])
                assert result.status == "succeeded", (job_id, result.error)

"""The worker refuses a Redis older than 6.2 (no ``BLMOVE``) at start, naming the version.

The judgement is a function of the ``INFO server`` reply (tested with any version); the start path is
tested with a real ``llmq worker`` against a real Redis behind a proxy that reports 6.0
(``tests/support/redisproxy.py``).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import redis

from tests.support.redisproxy import VersionProxy
from workers.llm.errors import ConfigurationError
from workers.runtime.redischeck import RedisVersionError, check_broker_redis, check_redis_version


@pytest.mark.parametrize("version", ["5.0.14", "6.0.16", "6.1.9", "2.8.24"])
def test_a_redis_older_than_6_2_is_refused_naming_its_version(version: str) -> None:
    with pytest.raises(RedisVersionError) as caught:
        check_redis_version({"redis_version": version, "redis_mode": "standalone"}, url="redis://:pw@h:6379/0")
    message = str(caught.value)
    assert f"version {version}" in message and ">= 6.2" in message and "BLMOVE" in message
    assert "redis://:***@h:6379/0" in message and "pw" not in message.replace("upgrade", "")
    assert isinstance(caught.value, ConfigurationError)  # what the worker's start turns into an exit
    assert type(caught.value)(*caught.value.args).args == caught.value.args  # survives Celery's JSON


@pytest.mark.parametrize("version", ["6.2.0", "6.2.14", "7.0.15", "7.2.4-rc1", "8.0.0", ""])
def test_6_2_and_newer_pass_and_an_unreadable_version_is_not_judged(version: str) -> None:
    check_redis_version({"redis_version": version}, url="redis://h:6379/0")
    check_redis_version({}, url="redis://h:6379/0")


def test_the_check_reads_the_server_it_is_given(redis_url: str) -> None:
    check_broker_redis(redis_url)  # the test Redis is new enough
    check_broker_redis("amqp://guest:guest@127.0.0.1:1//")  # RabbitMQ holds the queue: nothing to read
    check_broker_redis("redis://127.0.0.1:1/0", timeout_s=0.5)  # not answering: left to the consumer
    with VersionProxy(redis_url) as old, pytest.raises(RedisVersionError, match=r"version 6\.0\."):
        check_broker_redis(old)


def test_the_proxy_changes_only_the_version(redis_url: str) -> None:
    with VersionProxy(redis_url) as old:
        client = redis.Redis.from_url(old)
        client.set("k", "redis_version:x")
        assert client.get("k") == b"redis_version:x"
        assert str(client.info("server")["redis_version"]).startswith("6.0.")
        client.close()


@pytest.mark.parametrize("pool", ["threads", "gevent"])
def test_llmq_worker_refuses_an_old_redis_at_start(redis_url: str, pool: str) -> None:
    """The start path (Celery's ``worker_init``) runs the check: the worker exits before taking jobs,
    with exit status 2 (as every llmq command that refuses to start), the reason in one line, once,
    and no traceback."""
    with VersionProxy(redis_url) as old:
        env = {k: v for k, v in os.environ.items() if not k.startswith("LLMQ_")} | {"LLMQ_REDIS_URL": old}
        out = subprocess.run(
            [sys.executable, "-m", "llmq.cli", "worker", "--pool", pool, "--concurrency", "2"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert out.returncode == 2, out.stderr[-3000:]
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    refusal = [line for line in out.stderr.splitlines() if "cannot start" in line]
    assert len(refusal) == 1, out.stderr[-3000:]
    assert "llmq worker cannot start" in refusal[0] and "is version 6.0." in refusal[0] and ">= 6.2" in refusal[0]


def test_llmq_worker_refuses_a_tool_module_that_does_not_import(redis_url: str) -> None:
    """Another refusal of the same start path (a configuration error): the same one line and exit 2."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMQ_")}
    env |= {"LLMQ_REDIS_URL": redis_url, "LLMQ_TOOLS": "tests.support.no_such_tools"}
    out = subprocess.run(
        [sys.executable, "-m", "llmq.cli", "worker", "--pool", "gevent", "--concurrency", "2"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2, out.stderr[-3000:]
    refusal = [line for line in out.stderr.splitlines() if "cannot start" in line]
    assert len(refusal) == 1 and "tests.support.no_such_tools" in refusal[0], out.stderr[-3000:]
    assert "Traceback" not in out.stderr, out.stderr[-3000:]


def test_a_redis_without_an_append_only_file_is_said_once_at_start_as_what_a_restart_loses(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Real servers: a worker's start check names a Redis that keeps the queue in memory only (what
    ``llmq redis`` and this machine's own Redis run), and is silent on one with AOF (ops/redis.conf)."""
    from llmq.localredis import ManagedRedis
    from workers.runtime.redischeck import check_state_redis, persistence_notice

    volatile, durable = ManagedRedis(), ManagedRedis(durable=True)
    with caplog.at_level("WARNING", logger="llmq.worker"):
        try:
            volatile.start()
            durable.start()
            check_broker_redis(volatile.url)
            check_broker_redis(durable.url)
            check_state_redis(volatile.url, None)  # the queue's own Redis: said above, not twice
            check_state_redis(volatile.url, volatile.url)
            check_state_redis(durable.url, "amqp://guest:guest@127.0.0.1:5672//")  # durable state: nothing
            with caplog.at_level("WARNING", logger="llmq.worker"):
                check_state_redis(volatile.url, "amqp://guest:guest@127.0.0.1:5672//")  # the queue on RabbitMQ
        finally:
            volatile.stop()
            durable.stop()
    notes = [r.getMessage() for r in caplog.records if "appendonly" in r.getMessage()]
    assert len(notes) == 2 and notes[0] == notes[1], notes  # the queue's Redis, then the state's
    assert f"127.0.0.1:{volatile.port}" in notes[0] and "all of them: it takes no snapshots" in notes[0]
    assert "appendonly yes (ops/redis.conf)" in notes[0]
    # the judgement: snapshots only, a Redis that does not say, CONFIG refused (a managed Redis)
    snapshots = persistence_notice({"aof_enabled": 0}, "3600 1", url="redis://:pw@h:6379/0")
    assert snapshots is not None and "since its last snapshot" in snapshots and "pw" not in snapshots
    assert persistence_notice({"aof_enabled": 1}, "", url="redis://h/0") is None
    assert persistence_notice({}, None, url="redis://h/0") is None
    unknown = persistence_notice({"aof_enabled": "0"}, None, url="redis://h/0")
    assert unknown is not None and "since its last snapshot" in unknown

"""A newcomer's first errors: Redis down, no worker, a queue set by ``LLMQ_QUEUE``.

Real subprocesses of the ``llmq`` command against a dead port and a real Redis; a real in-process
worker consuming a non-default queue.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from llmq.localredis import free_port
from producers import Client
from simulator.app import SimulatorThread
from workers.settings import Settings


def _llmq(*args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "llmq.cli", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({"LLMQ_REDIS_URL": "http://127.0.0.1:6379"}, ["LLMQ_REDIS_URL", "redis://", "got http://"]),
        ({"LLMQ_REDIS_URL": "127.0.0.1:6379"}, ["LLMQ_REDIS_URL", "redis://"]),
        ({"LLMQ_BROKER_URL": "ftp://h/"}, ["LLMQ_BROKER_URL", "amqp://", "got ftp://"]),
        (
            {"LLMQ_REDIS_URL": "sentinel://:hunter2@127.0.0.1:{port}/0"},
            ["cannot reach Redis", "sentinel://:***@127.0.0.1", "No master found for 'mymaster'"],
        ),
        (
            {"LLMQ_BROKER_URL": "amqp://guest:hunter2@127.0.0.1:{port}//"},
            ["cannot reach the job queue's broker", "amqp://guest:***@127.0.0.1", "LLMQ_BROKER_URL"],
        ),
    ],
    ids=["http-scheme", "no-scheme", "broker-scheme", "no-sentinel", "no-rabbitmq"],
)
def test_a_wrong_url_is_one_line_naming_the_setting(env: dict[str, str], says: list[str], redis_url: str) -> None:
    port = str(free_port())  # nothing listens there
    env = {"LLMQ_REDIS_URL": redis_url} | {k: v.replace("{port}", port) for k, v in env.items()}
    out = _llmq("submit", "hello", "--no-wait", env=env)
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in out.stderr and "hunter2" not in out.stderr, out.stderr
    assert all(part in lines[0] for part in says), lines[0]


@pytest.mark.parametrize(
    "argv",
    [
        ("submit", "hello"),
        ("subscribe", "job-1"),
        ("budget", "show"),
        ("limits",),
        ("batch", "in.jsonl", "-o", "out.jsonl"),
    ],
    ids=lambda a: a[0],
)
def test_redis_unreachable_is_one_line_naming_the_url_and_the_fix(argv: tuple[str, ...], tmp_path: Path) -> None:
    (tmp_path / "in.jsonl").write_text('{"custom_id": "a", "prompt": "hi"}\n')
    url = f"redis://:hunter2@127.0.0.1:{free_port()}/0"  # nothing listens there
    out = subprocess.run(
        [sys.executable, "-m", "llmq.cli", *argv],
        env={**os.environ, "LLMQ_REDIS_URL": url},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
    assert url.replace("hunter2", "***") in lines[0] and "hunter2" not in out.stderr
    assert "LLMQ_REDIS_URL" in lines[0] and "start Redis" in lines[0]


def test_submit_without_a_worker_says_so_and_keeps_waiting(redis_url: str) -> None:
    out = _llmq(
        "submit",
        "hello",
        "--model",
        "openai:gpt-4o-mini",
        "--timeout",
        "4",
        env={"LLMQ_REDIS_URL": redis_url, "LLMQ_QUEUE": "nobody-home", "LLMQ_WORKER_CHECK_S": "0.5"},
    )
    assert out.returncode == 3, out.stderr  # waited out its own timeout
    lines = out.stderr.strip().splitlines()
    notes = [i for i, line in enumerate(lines) if "no worker is consuming" in line]
    assert len(notes) == 1 and "'nobody-home'" in lines[notes[0]] and "llmq worker" in lines[notes[0]]
    assert notes[0] < len(lines) - 1 and "Traceback" not in out.stderr  # said first, then the timeout


@pytest.fixture
def worker_settings(redis_url: str) -> Settings:
    """The ``worker`` fixture's worker, consuming a queue other than the default."""
    return Settings(redis_url=redis_url, queue="elsewhere", pool="threads", concurrency=4, coalesce_ms=20.0)


@pytest.fixture
def elsewhere(monkeypatch: pytest.MonkeyPatch, redis_url: str) -> Iterator[None]:
    monkeypatch.setenv("LLMQ_QUEUE", "elsewhere")
    monkeypatch.setenv("LLMQ_REDIS_URL", redis_url)
    yield


def test_llmq_queue_takes_client_and_cli_jobs_to_the_worker_on_that_queue(
    elsewhere: None, worker: object, simulator: SimulatorThread, redis_url: str
) -> None:
    with Client() as client:  # no queue argument: LLMQ_QUEUE, as the worker reads it
        assert client.queue == "elsewhere"
        job = {"model": "openai:gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
        assert client.submit(job).result(timeout=60).status == "succeeded"
    out = _llmq("submit", "hi", "--model", "openai:gpt-4o-mini", "--json", "--timeout", "60", env={})
    assert out.returncode == 0, out.stderr
    assert "no worker" not in out.stderr

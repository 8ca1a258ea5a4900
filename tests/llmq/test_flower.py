"""``llmq flower`` against a real worker subprocess: auth, workers, tasks, queues, no secrets."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from llmq.devstack import LocalStack, wait_http
from llmq.localredis import free_port
from producers import Client
from simulator.app import SimulatorThread
from simulator.env import provider_env
from tests.support.waits import until

pytestmark = pytest.mark.slow

SECRET = "sk-test-secret-do-not-leak-7f3a"
AUTH = "ops:flower-pw-123"


@pytest.fixture
def stack(redis_url: str, simulator: SimulatorThread, tmp_path: Path) -> Iterator[LocalStack]:
    env = {**os.environ, "LLMQ_REDIS_URL": redis_url}
    env.pop("FLOWER_BASIC_AUTH", None)
    (tmp_path / "logs").mkdir()
    with LocalStack(env=env, log_dir=str(tmp_path / "logs")) as s:
        s.start_redis()
        worker_env = {**provider_env(simulator.url), "OPENAI_API_KEY": SECRET, "ANTHROPIC_API_KEY": SECRET}
        s.start_worker(pool="threads", concurrency=4, name="flowerw", extra_env=worker_env)
        s.wait_for_workers(1)
        yield s


@contextlib.contextmanager
def flower(stack: LocalStack, tmp_path: Path, *args: str, auth: str | None = AUTH) -> Iterator[str]:
    port = free_port()
    env = {**stack.env}
    env.pop("FLOWER_BASIC_AUTH", None)
    if auth:
        env["FLOWER_BASIC_AUTH"] = auth
    log = open(tmp_path / f"flower-{port}.log", "wb")  # noqa: SIM115 - closed below
    argv = [sys.executable, "-m", "llmq.cli", "flower", "--port", str(port), "--address", "127.0.0.1", *args]
    proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(url + "/healthcheck", timeout=30, proc=proc)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
        log.close()


def get(url: str, auth: str | None = AUTH) -> tuple[int, str]:
    request = urllib.request.Request(url)
    if auth:
        request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_flower_refuses_to_start_without_auth(stack: LocalStack) -> None:
    env = {**stack.env}
    env.pop("FLOWER_BASIC_AUTH", None)
    argv = [sys.executable, "-m", "llmq.cli", "flower", "--port", str(free_port())]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert "FLOWER_BASIC_AUTH" in done.stderr and "--no-auth" in done.stderr
    bad = subprocess.run(argv, env={**env, "FLOWER_BASIC_AUTH": "nopassword"}, capture_output=True, text=True)
    assert bad.returncode == 2 and "user:password" in bad.stderr


def test_flower_lists_the_worker_and_completed_tasks_without_secrets(stack: LocalStack, tmp_path: Path) -> None:
    with flower(stack, tmp_path) as url:
        # the API is closed without credentials (and with wrong ones); health stays open
        assert get(f"{url}/api/workers", auth=None)[0] == 401
        assert get(f"{url}/api/workers", auth="ops:wrong")[0] == 401
        assert get(f"{url}/healthcheck", auth=None)[0] == 200

        def worker_listed() -> dict[str, object] | None:
            status, body = get(f"{url}/api/workers?refresh=1")
            workers = json.loads(body) if status == 200 else {}
            return workers if any(name.startswith("flowerw@") for name in workers) else None

        until(worker_listed, "Flower to list the worker", 60, 0.3)
        # Flower must have seen the worker's events before the jobs run, or it misses them
        until(lambda: "flowerw@" in get(f"{url}/api/workers?status=1")[1], "Flower to see the worker's events", 60, 0.3)

        with Client(stack.redis_url) as client:
            # every class and two tenants: the schedule decides the order, Flower still sees every task
            classes = ["interactive", "normal", "bulk", "bulk", "interactive"]
            handles = [
                client.submit(
                    {
                        "model": "openai:gpt-4o-mini",
                        "stream": False,
                        "metadata": {"custom_id": f"flower-{i}"},
                        "messages": [{"role": "user", "content": f"flower visible prompt {i}"}],
                        "priority": classes[i],
                        "tenant": f"flower-tenant-{i % 2}",
                    }
                )
                for i in range(5)
            ]
            for handle in handles:
                assert handle.result(timeout=60).status == "succeeded"
        ids = {h.id for h in handles}

        def finished_tasks() -> dict[str, dict[str, object]] | None:
            status, body = get(f"{url}/api/tasks?limit=100")
            tasks = json.loads(body) if status == 200 else {}
            done = {k: v for k, v in tasks.items() if k in ids and v.get("state") == "SUCCESS"}
            return done if len(done) == len(ids) else None

        tasks = until(finished_tasks, "Flower to list the completed tasks", 60, 0.3)
        for task in tasks.values():
            assert task["name"] == "llmq.run_job"
            # a short summary of the job (workers.contract.monitor_repr), never the message text
            args = str(task["args"])
            assert task["uuid"] in args and "openai:gpt-4o-mini" in args and '"custom_id":"flower-' in args
            assert '"messages":1' in args and "visible prompt" not in args
            assert isinstance(task["runtime"], float) and task["worker"].startswith("flowerw@")

        status, info = get(f"{url}/api/task/info/{handles[0].id}")
        assert status == 200 and json.loads(info)["state"] == "SUCCESS"
        status, queues = get(f"{url}/api/queues/length")
        assert status == 200 and "llmq" in {q["name"] for q in json.loads(queues)["active_queues"]}

        seen = [
            get(f"{url}/api/workers?refresh=1")[1],
            get(f"{url}/api/tasks")[1],
            info,
            queues,
            get(f"{url}/metrics", auth=None)[1],
            (tmp_path / "logs" / "flowerw.log").read_text(),
        ]
        for text in seen:
            assert SECRET not in text
            assert AUTH.split(":")[1] not in text

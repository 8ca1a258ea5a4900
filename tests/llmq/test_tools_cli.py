"""``llmq tools list`` reads the registries workers publish; a bad tool module stops a worker."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import redis

from llmq.devstack import LocalStack
from workers.tools import ToolRegistry, tool
from workers.tools.config import ToolsConfig
from workers.tools.publish import RegistryPublisher
from workers.tools.toolbox import Toolbox

ROOT = str(Path(__file__).parents[2])


def _tools(redis_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"LLMQ_REDIS_URL": redis_url, "PATH": "/usr/bin:/bin"}
    return subprocess.run(
        [sys.executable, "-m", "llmq.cli", "tools", "list", *args], env=env, capture_output=True, text=True, timeout=60
    )


def test_tools_list_shows_what_live_workers_published(redis_client: redis.Redis, redis_url: str) -> None:
    registry = ToolRegistry()

    @tool(registry=registry, timeout_s=5, idempotent=True)
    def get_capital(country: str) -> str:
        """The capital city of a country."""
        return country

    box = Toolbox(ToolsConfig(timeouts={"get_capital": 3}), registry)
    first = RegistryPublisher(redis_client, "w1", box.infos())
    second = RegistryPublisher(redis_client, "w2", box.infos())
    first.publish()
    second.publish()

    out = _tools(redis_url, "--json")
    assert out.returncode == 0, out.stderr
    (row,) = json.loads(out.stdout)
    assert (row["name"], row["timeout_s"], row["idempotent"], row["workers"]) == ("get_capital", 3, True, ["w1", "w2"])
    assert row["parameters"]["required"] == ["country"]

    second.stop()  # a worker that stops takes its tools along
    table = _tools(redis_url)
    assert table.returncode == 0
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["TOOL", "WORKERS", "TIMEOUT_S", "IDEMPOTENT", "SEQUENTIAL", "DESCRIPTION"]
    assert lines[1].split()[:5] == ["get_capital", "1", "3", "yes", "no"]
    first.stop()
    assert "no live worker" in _tools(redis_url).stdout


def test_a_tool_module_that_fails_to_import_stops_the_worker(redis_url: str) -> None:
    env = {**os.environ, "LLMQ_REDIS_URL": redis_url, "PYTHONPATH": ROOT, "LLMQ_TOOLS": "tests.support.no_such_module"}
    with LocalStack(env=env) as stack:
        stack.start_redis()
        worker = stack.start_worker(pool="threads", concurrency=2, name="broken")
        assert worker.wait(60) != 0
        log = (stack.log_dir / "broken.log").read_text()
        assert "tool module 'tests.support.no_such_module'" in log and "failed to import" in log

"""``llmq simulate`` prints the exact variables a worker needs, and a worker given them uses it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from celery.contrib.testing.worker import start_worker

from producers import Client
from producers.settings import ProducerSettings
from simulator.app import SimulatorThread
from workers.runtime.app import close_runner, create_app
from workers.settings import Settings


@pytest.fixture
def simulate() -> Iterator[dict[str, str]]:
    """A real ``llmq simulate`` on a free port; the ``export`` lines it printed, as a mapping."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "llmq.cli", "simulate", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=os.environ,
    )
    assert proc.stdout is not None
    exports: dict[str, str] = {}
    try:
        for line in proc.stdout:
            found = re.match(r"^\s+export (\w+)=(\S+)$", line)
            if found:
                exports[found.group(1)] = found.group(2)
            if "LLMQ_SIMULATOR_URL" in line:
                break
        yield exports
    finally:
        proc.terminate()
        proc.wait(10)
        proc.stdout.close()


def test_the_printed_variables_are_what_a_worker_needs(simulate: dict[str, str], redis_url: str) -> None:
    assert set(simulate) == {"OPENAI_BASE_URL", "ANTHROPIC_BASE_URL", "OLLAMA_HOST"}
    assert simulate["OPENAI_BASE_URL"].endswith("/v1")
    settings = Settings(redis_url=redis_url, queue="sim-check", pool="threads", concurrency=4)
    app = create_app(settings, provider_env=simulate)  # nothing but what it printed
    try:
        producer = ProducerSettings(redis_url=redis_url, queue="sim-check")
        with (
            start_worker(app, pool="threads", concurrency=4, perform_ping_check=False, without_heartbeat=True),
            Client(settings=producer) as client,
        ):
            for model in ("openai:gpt-4o-mini", "anthropic:claude-haiku-4-5", "ollama:llama3.1"):
                job = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
                result = client.submit(job).result(timeout=60)
                assert result.status == "succeeded", (model, result.error)
    finally:
        close_runner(app)


def test_the_printed_config_entries_serve_azure_gemini_and_bedrock(redis_url: str, tmp_path: Path) -> None:
    """The ``[providers.*]`` lines and key exports ``llmq simulate`` prints, pasted as they are."""
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "from simulator.app import worker_instructions; print(worker_instructions('0.0.0.0', 0))",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    lines = proc.stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if "config file (LLMQ_CONFIG)" in line) + 1
    end = next(i for i, line in enumerate(lines) if line.startswith("with their keys"))
    keys = dict(pair.split("=", 1) for pair in lines[end + 1].split("export ", 1)[1].split())
    with SimulatorThread() as sim:
        entries = "\n".join(line.strip() for line in lines[start:end]).replace("http://127.0.0.1:0", sim.url)
        config = tmp_path / "llmq.toml"
        config.write_text(entries)
        settings = Settings(redis_url=redis_url, queue="sim-named", pool="threads", concurrency=2, config=str(config))
        app = create_app(settings, provider_env=keys)
        try:
            producer = ProducerSettings(redis_url=redis_url, queue="sim-named")
            with (
                start_worker(app, pool="threads", concurrency=2, perform_ping_check=False, without_heartbeat=True),
                Client(settings=producer) as client,
            ):
                for model in ("azure:gpt-4o", "gemini:gemini-2.5-flash", "bedrock:us.amazon.nova-micro-v1:0"):
                    job = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
                    result = client.submit(job).result(timeout=60)
                    assert result.status == "succeeded", (model, result.error)
        finally:
            close_runner(app)

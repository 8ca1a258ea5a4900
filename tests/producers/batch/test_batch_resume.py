"""Kill ``llmq batch`` half-way (SIGKILL, or Ctrl-C) and rerun the same command."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from producers.batch import batch_id_for, job_id_for
from simulator.app import SimulatorThread
from tests.support.waits import until

pytestmark = pytest.mark.slow

LINES = 600


def write_input(path: Path) -> None:
    with open(path, "w") as f:
        for i in range(LINES):
            if i % 2:
                line = {"custom_id": f"row-{i}", "prompt": f"resume me {i}"}
            else:
                body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"resume me {i}"}]}
                line = {"custom_id": f"row-{i}", "method": "POST", "url": "/v1/chat/completions", "body": body}
            f.write(json.dumps(line) + "\n")


def count_lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def start_batch(redis_url: str, source: Path, out: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "LLMQ_REDIS_URL": redis_url}
    argv = [sys.executable, "-m", "llmq.cli", "batch", str(source), "-o", str(out)]
    argv += ["--model", "openai:gpt-4o-mini", "--window", "48", "--progress-interval", "0.5"]
    return subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_lines(path: Path, proc: subprocess.Popen[str], at_least: int, timeout: float = 90) -> None:
    def written() -> bool:
        assert proc.poll() is None, proc.communicate()
        return count_lines(path) >= at_least

    until(written, lambda: f"{at_least} lines (only {count_lines(path)})", timeout, 0.02)


def check_complete(out: Path, simulator: SimulatorThread, source: Path) -> None:
    text = out.read_text()
    assert text.endswith("\n")
    records = [json.loads(line) for line in text.splitlines()]
    ids = Counter(r["custom_id"] for r in records)
    assert len(ids) == LINES and set(ids.values()) == {1}
    assert all(r["response"]["status_code"] == 200 for r in records)
    # every line's job reached the provider exactly once, across both runs
    batch = batch_id_for(source, out)
    by_job = simulator.simulator.stats.by_job
    sent = Counter({job_id_for(batch, f"row-{i}"): by_job[job_id_for(batch, f"row-{i}")] for i in range(LINES)})
    assert set(sent.values()) == {1}, [k for k, v in sent.items() if v != 1][:5]


@pytest.fixture
def slow_simulator(simulator: SimulatorThread) -> SimulatorThread:
    simulator.simulator.config.latency = 0.02  # enough jobs stay in flight at the kill
    return simulator


def test_sigkill_half_way_then_rerun_writes_each_line_once_and_sends_none_twice(
    worker: object, slow_simulator: SimulatorThread, redis_url: str, tmp_path: Path
) -> None:
    source, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_input(source)
    proc = start_batch(redis_url, source, out)
    try:
        wait_for_lines(out, proc, LINES // 3)
    finally:
        proc.kill()
        proc.communicate(timeout=10)
    written_before = count_lines(out)
    assert LINES // 3 <= written_before < LINES
    assert out.read_bytes().endswith(b"\n")  # whole lines only

    rerun = start_batch(redis_url, source, out)
    _, stderr = rerun.communicate(timeout=180)

    assert rerun.returncode == 0, stderr
    assert f"{written_before} already done earlier" in stderr
    assert "picked up, not sent again" in stderr  # the jobs in flight at the kill were reused
    check_complete(out, slow_simulator, source)


def test_ctrl_c_stops_cleanly_and_a_rerun_finishes(
    worker: object, slow_simulator: SimulatorThread, redis_url: str, tmp_path: Path
) -> None:
    source, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_input(source)
    proc = start_batch(redis_url, source, out)
    wait_for_lines(out, proc, LINES // 4)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=20)

    assert proc.returncode == 130, stderr
    assert "llmq batch interrupted" in stderr and "rerun the same command" in stderr
    assert out.read_bytes().endswith(b"\n")
    assert all(json.loads(line)["custom_id"] for line in out.read_text().splitlines())

    rerun = start_batch(redis_url, source, out)
    _, stderr = rerun.communicate(timeout=180)
    assert rerun.returncode == 0, stderr
    check_complete(out, slow_simulator, source)

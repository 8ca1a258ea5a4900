"""``./dev test`` and ``./dev demo`` stop every process they started on SIGINT and SIGTERM.

Each is run for real in a subprocess; once it is up, its process tree is counted (pytest and its
workers, Redis servers, simulators, worker subprocesses, in sessions of their own or not), it gets
the signal, and afterwards none of those processes is left, nor any process carrying the marker put
in its environment (which what it starts inherits: a process whose parent died leaves the tree).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import psutil
import pytest

from tests.support.waits import until

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
GUARD_S = 240


def _marked(marker: str) -> list[psutil.Process]:
    """Every process whose environment carries ``marker`` (those it cannot read are not ours)."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get("LLMQ_REAPER_MARK") == marker:
                found.append(proc)
        except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess, OSError):
            continue
    return found


def _kill_all(proc: subprocess.Popen[bytes], marker: str) -> None:
    """After a failure: nothing of the run under test may outlive the test."""
    leftovers = _marked(marker)
    if proc.poll() is None:
        leftovers += [*psutil.Process(proc.pid).children(recursive=True), psutil.Process(proc.pid)]
    for leftover in leftovers:
        with contextlib.suppress(psutil.NoSuchProcess):
            leftover.kill()


def _env(marker: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LLMQ_", "PYTEST_"))}
    return env | {"LLMQ_REAPER_MARK": marker, **extra}


def _alive(procs: list[psutil.Process]) -> list[str]:
    out = []
    for proc in procs:
        try:
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                out.append(" ".join(proc.cmdline())[:120])
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
    return out


def _stop_and_count(proc: subprocess.Popen[bytes], marker: str, signum: int, at_least: int) -> None:
    tree = psutil.Process(proc.pid).children(recursive=True)
    names = " ".join(" ".join(p.cmdline()) for p in tree)
    assert len(tree) >= at_least and "redis-server" in names and "simulate" in names, names  # it started things
    proc.send_signal(signum)
    until(lambda: proc.poll() is not None, "the command to end after the signal", GUARD_S)
    until(lambda: not _alive(tree) and not _marked(marker), "every process it started to be gone", 10)
    assert proc.returncode == 128 + signum


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_dev_test_leaves_nothing_running(signum: int, tmp_path: Path) -> None:
    marker, ready = uuid.uuid4().hex, tmp_path / "ready"
    env = _env(marker, LLMQ_HOLDER_READY=str(ready), LLMQ_TEST_PROCS="2")
    proc = subprocess.Popen(
        [str(ROOT / "dev"), "test", "tests/support/stack_holder.py"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        until(ready.exists, "the held run to be up", GUARD_S)
        # pytest, 2 workers, the session's Redis, the stack's Redis, simulator and worker
        _stop_and_count(proc, marker, signum, at_least=6)
    finally:
        _kill_all(proc, marker)


def test_dev_demo_leaves_nothing_running_on_sigterm(tmp_path: Path) -> None:
    marker, out = uuid.uuid4().hex, tmp_path / "demo.out"
    with open(out, "wb") as sink:
        proc = subprocess.Popen(
            [str(ROOT / "dev"), "demo"], cwd=ROOT, env=_env(marker), stdout=sink, stderr=subprocess.STDOUT
        )
    try:
        until(lambda: b"worker is up" in out.read_bytes(), "the demo's worker to be up", GUARD_S)
        _stop_and_count(proc, marker, signal.SIGTERM, at_least=4)  # llmq demo, Redis, simulator, worker
    finally:
        _kill_all(proc, marker)


def test_the_reaper_stops_what_escaped_into_a_session_of_its_own(tmp_path: Path) -> None:
    """A grandchild in a new session whose parent already exited (an orphan) is stopped too."""
    marker, ready = uuid.uuid4().hex, tmp_path / "ready"
    orphan_maker = (
        "import subprocess, sys, pathlib;"
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(3600)'], start_new_session=True);"
        f"pathlib.Path({str(ready)!r}).write_text('ready')"
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "llmq.reaper", "--", sys.executable, "-c", orphan_maker],
        cwd=ROOT,
        env=_env(marker),
    )
    until(lambda: proc.poll() is not None, "the command to end (leaving its child behind)", GUARD_S)
    assert proc.returncode == 0 and ready.exists()
    until(lambda: not _marked(marker), "the orphan to be stopped", 10)

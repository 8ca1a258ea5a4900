"""A tool's isolation (``workers/tools/isolation.py``): where its calls run and how they stop.

The calls are started as the tool loop starts them (``execute.start``) and stopped as it stops them
at a timeout or a cancel (``token.cancel``). The handlers are the test tool module's
(``tests/support/tools.py``): a child process imports that module to find them. The same under a
real ``-P gevent`` worker: ``tests/integration/test_tools_isolation.py``.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

import tests.support.tools  # noqa: F401 - registers the test tools
from tests.support.tools import LEAKED_KEY, SPIN_DIR_ENV
from tests.support.waits import until
from workers.tools import REGISTRY, ToolRegistry, ToolSpec, register_tool, tool
from workers.tools.execute import RunningCall, render_error, start
from workers.tools.isolation import ToolProcessError

GUARD_S = 120


def _spec(name: str) -> ToolSpec:
    spec = REGISTRY.get(name)
    assert spec is not None, name
    return spec


def _run(name: str, timeout_s: float = 60) -> RunningCall:
    wake = threading.Event()
    call = start(_spec(name), {}, timeout_s=timeout_s, wake=wake)
    assert call.finished.wait(GUARD_S) and wake.is_set()
    return call


@pytest.fixture
def spin_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv(SPIN_DIR_ENV, str(tmp_path))
    yield tmp_path
    (tmp_path / "release").write_text("")  # whatever still spins stops


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie not yet reaped counts as gone
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] == "Z")


def test_a_process_call_runs_in_a_child_and_returns_its_value() -> None:
    call = _run("runner_pid")
    assert call.error is None
    assert call.value["pid"] != os.getpid() and call.value["cancelled"] is False


def test_a_process_calls_exception_comes_back_as_its_error() -> None:
    call = _run("process_boom")
    assert isinstance(call.error, ValueError) and "boom in a process" in str(call.error)
    assert LEAKED_KEY not in render_error(call.error)  # scrubbed like any handler's error


def test_a_cpu_bound_process_call_is_killed_when_the_loop_stops_waiting(spin_dir: Path) -> None:
    """What the tool loop does at a call's timeout (or a cancel): set its token. The child, spinning
    without a token to check, is killed; the call ends with that as its error."""
    wake = threading.Event()
    call = start(_spec("spin_process"), {}, timeout_s=2, wake=wake)
    pid_file = spin_dir / "process.pid"
    until(pid_file.exists, "the child to start spinning", GUARD_S)
    pid = int(pid_file.read_text())
    assert pid != os.getpid() and not call.done
    call.token.cancel("timeout")
    assert call.finished.wait(GUARD_S)
    assert isinstance(call.error, ToolProcessError) and "was killed (timeout)" in str(call.error)
    until(lambda: not _alive(pid), "the child to be gone", GUARD_S)
    assert not (spin_dir / "process.done").exists()


def test_a_thread_call_leaves_the_caller_free_and_runs_to_its_end(spin_dir: Path) -> None:
    """An OS thread cannot be killed: at the timeout the call is left (the job goes on), the handler
    spins on until released, then ends on its own."""
    wake = threading.Event()
    call = start(_spec("spin_thread"), {}, timeout_s=2, wake=wake)
    until((spin_dir / "thread.pid").exists, "the thread to start spinning", GUARD_S)
    call.token.cancel("timeout")
    assert not call.done  # still spinning: nothing stops a thread
    (spin_dir / "release").write_text("")
    assert call.finished.wait(GUARD_S) and call.value == "thread spun"


def test_a_tool_not_registered_at_import_cannot_run_in_a_process() -> None:
    registry = ToolRegistry()
    spec = register_tool("made_late", None, {"type": "object"}, lambda: "late", isolation="process", registry=registry)
    wake = threading.Event()
    call = start(spec, {}, timeout_s=60, wake=wake)
    assert call.finished.wait(GUARD_S)
    assert isinstance(call.error, ToolProcessError) and "is not registered by importing" in str(call.error)


def test_isolation_is_checked_when_the_tool_is_registered() -> None:
    with pytest.raises(ValueError, match="isolation must be 'thread' or 'process'"):

        @tool(isolation="fork", registry=ToolRegistry())  # type: ignore[arg-type]
        def bad() -> str:
            return "x"

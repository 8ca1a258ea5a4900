"""Run a command and stop every process it started: when it ends, and on Ctrl-C or SIGTERM.

``./dev test`` and ``./dev demo`` run under it (``python -m llmq.reaper [options] -- CMD ...``). A test
run starts Redis servers, simulators and worker subprocesses, each in a session of its own (so a
Ctrl-C meant for the run does not reach them half-way); when the run is killed (``timeout`` and CI
send SIGTERM) nothing stopped them, and they kept running. Here:

* the command runs in a process group of its own; the first SIGINT or SIGTERM is passed on to that
  group as SIGINT, what Ctrl-C does, so pytest and ``llmq demo`` run their own clean-up; a second
  signal, or ``--grace`` seconds without the command ending, kills the group;
* on Linux this process is a child subreaper (``PR_SET_CHILD_SUBREAPER``): a process whose parent
  dies is re-parented here, not to init, so nothing the command started can leave the tree;
* when the command has ended, every process still below this one is stopped (SIGTERM, then SIGKILL).

The exit status is the command's, or 128 + the signal that stopped it.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from types import FrameType

import psutil

__all__ = ["main", "stop_descendants"]

_PR_SET_CHILD_SUBREAPER = 36


def _become_subreaper() -> bool:
    """Adopt the orphans of our descendants (Linux); False where the OS has no such thing."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


def stop_descendants(grace_s: float = 3.0) -> list[int]:
    """SIGTERM every process below this one, SIGKILL what is left after ``grace_s``; their pids."""
    left = psutil.Process().children(recursive=True)
    for proc in left:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.terminate()
    _, alive = psutil.wait_procs(left, timeout=grace_s)
    for proc in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    psutil.wait_procs(alive, timeout=grace_s)
    return [p.pid for p in left]


def _parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m llmq.reaper", description=__doc__.splitlines()[0])
    parser.add_argument("--grace", type=float, default=20.0, help="seconds the command gets to clean up after a signal")
    parser.add_argument(
        "--map-exit",
        action="append",
        default=[],
        metavar="CODE:NEW:MESSAGE",
        help="exit with NEW (and print MESSAGE) when the command exits with CODE",
    )
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    if args.command[:1] == ["--"]:
        args.command = args.command[1:]
    if not args.command:
        parser.error("no command given")
    return args


class _Signals:
    """What the reaper received: the first signal's number and time."""

    def __init__(self) -> None:
        self.received: list[int] = []
        self.first_at = 0.0

    def note(self, signum: int) -> int:
        """Record ``signum``; what to send the command's group: SIGINT the first time, SIGKILL after."""
        if not self.received:
            self.first_at = time.monotonic()
        self.received.append(signum)
        return signal.SIGINT if len(self.received) == 1 else signal.SIGKILL

    def grace_over(self, grace_s: float) -> bool:
        return len(self.received) == 1 and time.monotonic() > self.first_at + grace_s


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(sys.argv[1:] if argv is None else argv)
    _become_subreaper()
    signals = _Signals()
    started: list[subprocess.Popen[bytes]] = []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        # the first: what Ctrl-C does, to the whole group (pytest's workers too); a second: no more waiting
        send = signals.note(signum)
        if started:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(started[0].pid, send)

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, on_signal)  # before the start: a signal from the very first moment counts
    proc = subprocess.Popen(args.command, process_group=0)
    started.append(proc)
    if signals.received:
        os.killpg(proc.pid, signal.SIGINT)
    try:
        while True:
            try:
                code = proc.wait(timeout=0.2)
                break
            except subprocess.TimeoutExpired:
                if signals.grace_over(args.grace):
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signals.note(signal.SIGKILL))
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, signal.SIG_IGN)  # the clean-up below runs to its end
        stop_descendants()
    if signals.received:
        return 128 + signals.received[0]
    if code < 0:
        return 128 - code
    for mapping in args.map_exit:
        old, new, message = mapping.split(":", 2)
        if code == int(old):
            print(message, file=sys.stderr)
            return int(new)
    return code


if __name__ == "__main__":
    sys.exit(main())

"""GreenSignals: under gevent a wrapped handler runs in a greenlet of its own, so it may block (Celery's
soft shutdown waits in its handler), and what it installs for the next signal is wrapped too.

The signals come from this (the parent) process while the child's main greenlet sleeps, so they land
in the hub: there an unwrapped handler that blocks raises ``BlockingSwitchOutError``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

CHILD = textwrap.dedent(
    """
    from gevent import monkey

    monkey.patch_all()

    import signal
    import time

    import gevent

    from workers.runtime.shutdown import GreenSignals

    seen = []


    def where():
        current = gevent.getcurrent()
        return "hub" if current is gevent.get_hub() else "main" if current.parent is None else "own"


    def second(signum, frame):
        time.sleep(0.05)  # blocks: possible only outside the hub
        seen.append("second:" + where())
        print(seen[-1], flush=True)


    def first(signum, frame):
        signal.signal(signal.SIGTERM, second)  # as Celery's handlers install the next stage's
        time.sleep(0.05)
        seen.append("first:" + where())
        print(seen[-1], flush=True)


    signal.signal(signal.SIGTERM, first)
    GreenSignals(["SIGTERM"]).install()
    # the hub runs before any signal (a signal landing in its very first start breaks gevent itself,
    # wrapped or not; a worker's hub has long been running when it gets SIGTERM)
    time.sleep(0.01)
    print("ready", flush=True)
    deadline = time.monotonic() + 30
    while not seen and time.monotonic() < deadline:
        time.sleep(0.01)
    while signal.getsignal(signal.SIGTERM) is second and time.monotonic() < deadline:
        time.sleep(0.01)  # until the wrapper re-wrapped what the first handler installed
    print("armed", flush=True)
    while len(seen) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    """
)


def test_wrapped_handlers_run_in_their_own_greenlet() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=os.getcwd()
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.stdout.readline().strip() == "first:own"
        assert proc.stdout.readline().strip() == "armed"
        os.kill(proc.pid, signal.SIGTERM)  # the handler the first one installed: wrapped too
        assert proc.stdout.readline().strip() == "second:own"
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "Traceback" not in err and "BlockingSwitchOutError" not in err, err

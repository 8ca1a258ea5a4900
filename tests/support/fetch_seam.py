"""A real ``llmq worker`` process (threads pool) whose broker fetch stops at the seam.

    python -m tests.support.fetch_seam kill-worker|kill-redis --concurrency 2 --hostname w@%h

The worker's broker channel (workers/runtime/broker.py) calls ``on_fetched`` right after its fetch
script took a message and before the message is delivered. Here, the first time that happens:

* ``kill-worker``: the process SIGKILLs itself (the message was popped and nobody holds it);
* ``kill-redis``: it SIGKILLs the Redis whose pid is ``LLMQ_TEST_REDIS_PID`` and goes on (the job
  then runs against a dead Redis, which the test restarts).

When ``LLMQ_TEST_SEAM_GATE`` names a file, the seam first waits for that file to exist.

Everything else is the shipped worker: ``llmq worker``'s own Celery command line and environment.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys

from tests.support.waits import until
from workers.runtime.broker import Channel


def install(mode: str) -> None:
    fired: list[str] = []

    def on_fetched(self: Channel, delivery_tag: str) -> None:
        if fired:
            return
        fired.append(delivery_tag)
        # held here until the test says go (its producer may still be writing to the Redis we kill)
        gate = os.environ.get("LLMQ_TEST_SEAM_GATE")
        if gate:
            with contextlib.suppress(AssertionError):  # past the guard the seam goes on regardless
                until(lambda: os.path.exists(gate), "the test's gate", 120)
        if mode == "kill-worker":
            os.kill(os.getpid(), signal.SIGKILL)
        elif mode == "kill-redis":
            os.kill(int(os.environ["LLMQ_TEST_REDIS_PID"]), signal.SIGKILL)

    Channel.on_fetched = on_fetched  # type: ignore[method-assign]  # the seam, in this process only


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=("kill-worker", "kill-redis"))
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--hostname", default="seam@%h")
    args = parser.parse_args()
    install(args.mode)

    from llmq.commands.worker import command
    from workers.runtime.launch import main as launch_main

    worker = argparse.Namespace(
        pool="threads", concurrency=args.concurrency, queue=os.environ.get("LLMQ_QUEUE", "llmq")
    )
    worker.loglevel, worker.hostname = "WARNING", args.hostname
    # what `llmq worker` sets before it execs the same command line
    os.environ.update(
        {
            "LLMQ_POOL": "threads",
            "LLMQ_CONCURRENCY": str(args.concurrency),
            "LLMQ_QUEUE": worker.queue,
            "REMAP_SIGTERM": "SIGQUIT",
            "CELERY_CUSTOM_WORKER_POOL": "workers.runtime.pool:ThreadPool",
        }
    )
    sys.exit(launch_main(command(worker)[3:]))


if __name__ == "__main__":
    main()

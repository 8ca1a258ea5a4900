"""``llmq worker``: a Celery worker process for llmqueue jobs (gevent by default)."""

from __future__ import annotations

import argparse
import os
import sys


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("worker", help="run a worker process (one per core)")
    p.add_argument(
        "--pool",
        "-P",  # Celery's own spelling, which a Celery user types first
        choices=("gevent", "threads"),
        default=os.environ.get("LLMQ_POOL", "gevent"),
    )
    p.add_argument(
        "--concurrency",
        "-c",
        type=int,
        default=os.environ.get("LLMQ_CONCURRENCY", "100"),
        help="concurrent jobs in this process; size it by CPU budget, not 1000 (default 100)",
    )
    p.add_argument("--queue", "-Q", default=os.environ.get("LLMQ_QUEUE", "llmq"))
    p.add_argument("--loglevel", "-l", default="INFO")
    p.add_argument("--hostname", "-n", default=None, help="worker node name (default llmq-<pid>@%%h)")
    p.set_defaults(func=run)


def command(args: argparse.Namespace) -> list[str]:
    """The command line this worker runs (also used by tests and the demo): Celery's ``worker``
    command without the rest of Celery's command line (``workers/runtime/launch.py``, ~12 MB less
    memory per process); ``command(args)[3:]`` are that command's options."""
    return [
        sys.executable,
        "-m",
        "workers.runtime.launch",
        "-P",
        # threads: ours (workers/runtime/pool.py), which hands running jobs back at the end of a
        # graceful shutdown; Celery loads it as its "custom" pool
        "custom" if args.pool == "threads" else args.pool,
        "-c",
        str(args.concurrency),
        "-Q",
        consumed_queues(args.queue),
        # no -E: it would override the app's worker_send_task_events, so LLMQ_TASK_EVENTS=0 could not
        # turn task events off (workers/runtime/app.py sets them from the settings, on by default)
        "-l",
        args.loglevel,
        "-n",
        args.hostname or f"llmq-{os.getpid()}@%h",
        "--without-mingle",
        "--without-gossip",
    ]


def consumed_queues(queue: str) -> str:
    """What ``-Q`` names: the job queue (on Redis, one schedule of every class); on RabbitMQ its
    class queues (``workers/contract/schedule.py``), which the worker takes from by weight."""
    from workers.connections.brokerurl import is_amqp
    from workers.contract.schedule import class_queues

    if is_amqp(os.environ.get("LLMQ_BROKER_URL") or ""):
        return ",".join(class_queues(queue).values())
    return queue


def run(args: argparse.Namespace) -> int:
    # The app reads these through its settings, so slots, pools and prefetch agree with -P/-c.
    os.environ["LLMQ_POOL"] = args.pool
    os.environ["LLMQ_CONCURRENCY"] = str(args.concurrency)
    os.environ["LLMQ_QUEUE"] = args.queue
    # SIGTERM (what Docker, Kubernetes and systemd send) starts Celery's cold shutdown with its
    # soft window: stop taking jobs, let running streams finish for up to LLMQ_SOFT_SHUTDOWN_TIMEOUT
    # seconds (it stops as soon as none runs), then hand the rest back to the queue (late acks: their
    # messages are restored). The app's worker class makes this work under gevent too
    # (workers/runtime/shutdown.py).
    # Celery's own SIGTERM (warm shutdown) would wait for every job however long it runs.
    os.environ.setdefault("REMAP_SIGTERM", "SIGQUIT")
    os.environ["CELERY_CUSTOM_WORKER_POOL"] = "workers.runtime.pool:ThreadPool"
    # the worker loads these first, while it is small (workers/runtime/launch.py); what finding them
    # imports (settings, config, pydantic) stays behind at the exec
    from workers.accounting.bpefiles import PRELOAD_ENV
    from workers.accounting.pricehandover import PRICES_ENV
    from workers.runtime.launch import default_encodings, default_prices

    os.environ[PRELOAD_ENV] = ",".join(default_encodings())
    # genai-prices' answers for the default model and the start (its data, ~7 MB, stays behind)
    os.environ[PRICES_ENV] = default_prices()
    argv = command(args)
    # exec: signals (Ctrl-C, SIGTERM for a warm shutdown) go straight to Celery, and gevent
    # patches the process before anything else is imported.
    os.execv(argv[0], argv)
    return 0  # pragma: no cover

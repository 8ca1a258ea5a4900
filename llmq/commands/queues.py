"""``llmq queues [--json]``: per scheduling class and per tenant, jobs queued, running, oldest wait.

Reads the job queue's schedule (``workers/connections/schedview.py``) on the broker's Redis
(``LLMQ_BROKER_URL``, else ``LLMQ_REDIS_URL``). A tenant at its ``max_concurrency`` is marked
``at limit``; jobs waiting for a slot of their concurrency key are counted as ``parked``. On RabbitMQ
the schedule is not in Redis: the command says so (RabbitMQ's own tools show its queues).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from llmq.commands.table import print_table


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("queues", help="jobs queued and running, per class and tenant")
    p.add_argument("--queue", "-Q", default=os.environ.get("LLMQ_QUEUE", "llmq"))
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def _wait(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{seconds / 60:.1f}m"
    return f"{seconds / 3600:.1f}h"


def run(args: argparse.Namespace) -> int:
    from producers.settings import producer_settings
    from workers.connections.brokerurl import is_amqp
    from workers.connections.redisclient import redis_client
    from workers.connections.schedview import queue_view

    url = producer_settings().broker
    if is_amqp(url):
        print(
            "llmq queues: the job queue is on RabbitMQ (LLMQ_BROKER_URL): its class queues are "
            f"{args.queue}.interactive, {args.queue} and {args.queue}.bulk (rabbitmqctl list_queues)",
            file=sys.stderr,
        )
        return 2
    client = redis_client(url, max_connections=2)
    try:
        view = queue_view(client, args.queue)
    finally:
        client.close()
    if args.json:
        print(json.dumps(view.as_json()))
        return 0
    print(
        f"queue {view.queue}: {view.queued} queued"
        + (f" ({view.unscheduled} not yet scheduled)" if view.unscheduled else "")
    )
    rows = [["class", "queued", "running", "oldest wait"]]
    rows += [[c.priority, str(c.queued), str(c.running), _wait(c.oldest_wait_s)] for c in view.classes]
    print_table(rows, numeric=True)
    if view.tenants:
        print()
        rows = [["tenant", "class", "queued", "running", "parked", "oldest wait", ""]]
        for t in view.tenants:
            note = "at limit" if t.at_limit else ""
            rows.append(
                [t.tenant, t.priority, str(t.queued), str(t.running), str(t.parked), _wait(t.oldest_wait_s), note]
            )
        print_table(rows)
    return 0

"""``llmq tools list``: the worker tools live workers have registered (read from Redis).

    llmq tools list [--json]

One row per tool name: how many live workers have it, its timeout, whether it is idempotent or
sequential, and its description; ``--json`` adds each tool's JSON Schema and the worker ids.
Redis is ``LLMQ_REDIS_URL``. Only the producer side is imported (the registry layout is part of
the wire contract).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from llmq.commands.table import print_table


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("tools", help="worker tools registered by live workers")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = actions.add_parser("list", help="list the worker tools live workers have")
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    listing.set_defaults(func=run)


def rows(client: Any) -> list[dict[str, Any]]:
    from producers.tools import live_workers, tools_by_name

    out = []
    for _name, (info, workers) in sorted(tools_by_name(live_workers(client)).items()):
        out.append({**info.model_dump(mode="json"), "workers": sorted(workers)})
    return out


def run(args: argparse.Namespace) -> int:

    from producers.client import default_redis_url
    from workers.connections.redisclient import redis_client

    client = redis_client(default_redis_url(), max_connections=4)
    try:
        found = rows(client)
    finally:
        client.close()
    if args.json:
        print(json.dumps(found, indent=2))
        return 0
    if not found:
        print("no live worker has registered tools (start one with LLMQ_TOOLS=your.module)")
        return 0
    table = [["TOOL", "WORKERS", "TIMEOUT_S", "IDEMPOTENT", "SEQUENTIAL", "DESCRIPTION"]]
    for row in found:
        description = (row["description"] or "").splitlines()[0] if row["description"] else ""
        table.append(
            [
                row["name"],
                str(len(row["workers"])),
                f"{row['timeout_s']:g}",
                "yes" if row["idempotent"] else "no",
                "yes" if row["sequential"] else "no",
                description[:60],
            ]
        )
    print_table(table)
    return 0

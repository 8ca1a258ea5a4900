"""``llmq cache``: the response cache's size, and purging it.

    llmq cache stats [--json]
    llmq cache purge [--tenant T]

Redis is ``LLMQ_REDIS_URL``. ``purge --tenant T`` deletes the entries of tenant scope of ``T``;
entries of global scope belong to no tenant and go only with a purge of everything.
"""

from __future__ import annotations

import argparse
import json

from llmq.commands.budget import parse_tenant
from workers.connections.redisclient import redis_client


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("cache", help="response cache: stats, purge")
    actions = p.add_subparsers(dest="cache_command", required=True, metavar="ACTION")
    stats = actions.add_parser("stats", help="entries and bytes stored")
    stats.add_argument("--json", action="store_true", help="machine-readable output")
    purge = actions.add_parser("purge", help="delete stored answers")
    purge.add_argument("--tenant", type=parse_tenant, help="only this tenant's entries (tenant scope)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:

    from workers.jobs.responsecache import ResponseCache
    from workers.settings import get_settings

    url = get_settings().redis_url
    client = redis_client(url, max_connections=4, socket_connect_timeout=2.0, socket_timeout=30.0)
    try:
        cache = ResponseCache(client)
        if args.cache_command == "purge":
            dropped = cache.purge(args.tenant)
            whose = f"of tenant {args.tenant} " if args.tenant else ""
            print(f"purged {dropped} response cache entries {whose}".rstrip())
        else:
            stats = cache.stats()
            if args.json:
                print(json.dumps({"entries": stats.entries, "bytes": stats.bytes}))
            else:
                print(f"{stats.entries} entries, {stats.bytes} bytes")
    finally:
        client.close()
    return 0

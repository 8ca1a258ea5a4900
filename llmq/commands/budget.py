"""``llmq budget``: show, set and reset the monthly budget ledger.

    llmq budget show [--json] [--month YYYY-MM]
    llmq budget set --monthly USD [--tenant T | --tag T | --user U]   (USD = none removes the stored limit)
    llmq budget reset [--tenant T | --tag T | --user U] [--month YYYY-MM]

Redis is ``LLMQ_REDIS_URL``. Limits set here are stored in Redis and win over the defaults:
``LLMQ_MONTHLY_BUDGET_USD``, else ``[budget] monthly_usd`` / ``[budget.tenants]`` / ``[budget.tags]`` /
``[budget.users]`` in ``LLMQ_CONFIG``. A tag or user limit is enforced by the same reservation as
the global and tenant ones; what tags and users spent without one: ``llmq spend``.
Worker-side modules are imported inside :func:`run`, never at import time.
"""

from __future__ import annotations

import argparse
import re
import sys
from typing import Any

from llmq.commands.table import print_table, usd
from workers.connections.redisclient import redis_client

_MONTH = re.compile(r"^\d{4}-(0[1-9]|1[0-2])$")
_TENANT = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")  # as CompletionJob.tenant
_TAG = re.compile(r"^[A-Za-z0-9_.:/-]{1,64}$")  # as CompletionJob.tags


def _usd_or_none(raw: str) -> float | None:
    if raw.lower() == "none":
        return None
    try:
        value = float(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{raw!r} is not an amount in USD (or 'none')") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError("the monthly budget must be a finite amount >= 0")
    return value


def parse_month(raw: str) -> str:
    """An argparse type: a UTC month like ``2026-01``."""
    if not _MONTH.match(raw):
        raise argparse.ArgumentTypeError(f"{raw!r} is not a month like 2026-01")
    return raw


def parse_tenant(raw: str) -> str:
    """An argparse type: a tenant name, as jobs carry it."""
    if not _TENANT.match(raw):
        raise argparse.ArgumentTypeError(f"{raw!r} is not a tenant name (1-64 of letters, digits, '_', '.', '-')")
    return raw


def _tag(raw: str) -> str:
    if not _TAG.match(raw):
        raise argparse.ArgumentTypeError(f"{raw!r} is not a tag (1-64 of letters, digits, '_', '.', ':', '/', '-')")
    return raw


def _user(raw: str) -> str:
    if not 1 <= len(raw) <= 256:  # as CompletionJob.user
        raise argparse.ArgumentTypeError("a user is 1-256 characters")
    return raw


def _scope_args(p: argparse.ArgumentParser, verb: str) -> None:
    which = p.add_mutually_exclusive_group()
    which.add_argument("--tenant", type=parse_tenant, help=f"{verb} one tenant instead of the whole deployment")
    which.add_argument("--tag", type=_tag, help=f"{verb} one tag")
    which.add_argument("--user", type=_user, help=f"{verb} one end user")


def _scope(args: argparse.Namespace) -> str:
    for kind in ("tenant", "tag", "user"):
        if getattr(args, kind) is not None:
            return f"{kind}:{getattr(args, kind)}"
    return "global"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("budget", help="show, set or reset the monthly budget")
    actions = p.add_subparsers(dest="budget_command", required=True, metavar="ACTION")
    show = actions.add_parser("show", help="spend, reservations and limit per scope")
    show.add_argument("--json", action="store_true", help="machine-readable output")
    show.add_argument("--month", type=parse_month, help="a past UTC month (default: the current one)")
    set_ = actions.add_parser("set", help="store a monthly limit in USD")
    set_.add_argument("--monthly", type=_usd_or_none, required=True, metavar="USD", help="limit, or 'none'")
    _scope_args(set_, "limit")
    reset = actions.add_parser("reset", help="forget a month's spend and reservations (limits stay)")
    _scope_args(reset, "reset")
    reset.add_argument("--month", type=parse_month, help="default: the current UTC month")
    p.set_defaults(func=run)


def build_ledger(client: Any) -> Any:
    """A :class:`~workers.accounting.ledger.Ledger` with the defaults from the environment and config."""
    from workers.accounting.ledger import configured_ledger
    from workers.routes import load_config
    from workers.settings import get_settings

    settings = get_settings()
    return configured_ledger(client, settings, load_config(settings.config))


def _print_table(snapshot: Any) -> None:
    print(f"Budget for {snapshot.month} (UTC); kill switch at {snapshot.kill_ratio:.0%} of each limit")
    rows = [("SCOPE", "SPENT", "RESERVED", "LIMIT", "KILL AT", "REMAINING", "STATE")]
    for s in snapshot.scopes:
        rows.append(
            (
                s.scope,
                usd(s.spent_usd),
                usd(s.reserved_usd),
                usd(s.limit_usd),
                usd(s.kill_switch_usd),
                usd(s.remaining_usd),
                s.state,
            )
        )
    print_table(rows, numeric=True)


def run(args: argparse.Namespace) -> int:
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    from workers.llm.errors import ConfigurationError
    from workers.settings import get_settings

    url = get_settings().redis_url
    client = redis_client(
        url, max_connections=8, socket_connect_timeout=2.0, socket_timeout=5.0, retry=Retry(NoBackoff(), 1)
    )
    try:
        ledger = build_ledger(client)
        if args.budget_command == "show":
            snapshot = ledger.show(args.month)
            if args.json:
                print(snapshot.model_dump_json(indent=2))
            else:
                _print_table(snapshot)
        elif args.budget_command == "set":
            ledger.set_limit(args.monthly, tenant=args.tenant, tag=args.tag, user=args.user)
            scope = _scope(args)
            what = "removed (defaults apply)" if args.monthly is None else f"set to {usd(args.monthly)}"
            print(f"monthly limit for {scope} {what}")
        else:
            scopes = ledger.reset(tenant=args.tenant, month=args.month, tag=args.tag, user=args.user)
            print(f"reset {args.month or ledger.month()} spend and reservations of: {', '.join(scopes)}")
    except ConfigurationError as exc:
        print(f"llmq budget: {exc}", file=sys.stderr)
        return 2
    finally:
        client.close()
    return 0

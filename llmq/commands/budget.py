"""``llmq budget``: show, set and reset the monthly budget ledger.

    llmq budget show [--json] [--month YYYY-MM]
    llmq budget set --monthly USD [--tenant T]      (USD = none removes the stored limit)
    llmq budget reset [--tenant T] [--month YYYY-MM]

Redis is ``LLMQ_REDIS_URL``. Limits set here are stored in Redis and win over the defaults:
``LLMQ_MONTHLY_BUDGET_USD``, else ``[budget] monthly_usd`` / ``[budget.tenants]`` in ``LLMQ_CONFIG``.
Worker-side modules are imported inside :func:`run`, never at import time.
"""

from __future__ import annotations

import argparse
import re
import sys
from typing import Any

from llmq.commands.table import print_table
from workers.connections.redisclient import redis_client

_MONTH = re.compile(r"^\d{4}-(0[1-9]|1[0-2])$")
_TENANT = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")  # as CompletionJob.tenant


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


def _month(raw: str) -> str:
    if not _MONTH.match(raw):
        raise argparse.ArgumentTypeError(f"{raw!r} is not a month like 2026-01")
    return raw


def _tenant(raw: str) -> str:
    if not _TENANT.match(raw):
        raise argparse.ArgumentTypeError(f"{raw!r} is not a tenant name (1-64 of letters, digits, '_', '.', '-')")
    return raw


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("budget", help="show, set or reset the monthly budget")
    actions = p.add_subparsers(dest="budget_command", required=True, metavar="ACTION")
    show = actions.add_parser("show", help="spend, reservations and limit per scope")
    show.add_argument("--json", action="store_true", help="machine-readable output")
    show.add_argument("--month", type=_month, help="a past UTC month (default: the current one)")
    set_ = actions.add_parser("set", help="store a monthly limit in USD")
    set_.add_argument("--monthly", type=_usd_or_none, required=True, metavar="USD", help="limit, or 'none'")
    set_.add_argument("--tenant", type=_tenant, help="limit one tenant instead of the whole deployment")
    reset = actions.add_parser("reset", help="forget a month's spend and reservations (limits stay)")
    reset.add_argument("--tenant", type=_tenant, help="reset one tenant only")
    reset.add_argument("--month", type=_month, help="default: the current UTC month")
    p.set_defaults(func=run)


def build_ledger(client: Any) -> Any:
    """A :class:`~workers.accounting.ledger.Ledger` with the defaults from the environment and config."""
    from workers.accounting.ledger import Ledger
    from workers.routes import load_config
    from workers.settings import get_settings

    settings = get_settings()
    budget = load_config(settings.config).budget
    monthly = settings.monthly_budget_usd if settings.monthly_budget_usd is not None else budget.monthly_usd
    return Ledger(
        client, monthly_limit_usd=monthly, tenant_limits_usd=budget.tenants, kill_ratio=budget.kill_switch_ratio
    )


def _fmt(value: float | None) -> str:
    """``$1,234.50``, ``$0.000125``: cents always, micro-dollars when there are any."""
    if value is None:
        return "-"
    whole, _, frac = f"{value:,.6f}".partition(".")
    return f"${whole}.{frac.rstrip('0').ljust(2, '0')}"


def _print_table(snapshot: Any) -> None:
    print(f"Budget for {snapshot.month} (UTC); kill switch at {snapshot.kill_ratio:.0%} of each limit")
    rows = [("SCOPE", "SPENT", "RESERVED", "LIMIT", "KILL AT", "REMAINING", "STATE")]
    for s in snapshot.scopes:
        rows.append(
            (
                s.scope,
                _fmt(s.spent_usd),
                _fmt(s.reserved_usd),
                _fmt(s.limit_usd),
                _fmt(s.kill_switch_usd),
                _fmt(s.remaining_usd),
                s.state,
            )
        )
    print_table(rows, numeric=True)


def run(args: argparse.Namespace) -> int:
    import redis
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
            ledger.set_limit(args.monthly, tenant=args.tenant)
            scope = f"tenant:{args.tenant}" if args.tenant else "global"
            what = "removed (defaults apply)" if args.monthly is None else f"set to {_fmt(args.monthly)}"
            print(f"monthly limit for {scope} {what}")
        else:
            scopes = ledger.reset(tenant=args.tenant, month=args.month)
            print(f"reset {args.month or ledger.month()} spend and reservations of: {', '.join(scopes)}")
    except redis.RedisError as exc:
        print(f"llmq budget: Redis at {url} is not reachable: {exc}", file=sys.stderr)
        return 1
    except ConfigurationError as exc:
        print(f"llmq budget: {exc}", file=sys.stderr)
        return 2
    finally:
        client.close()
    return 0

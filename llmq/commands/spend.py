"""``llmq spend``: what was spent, by tenant, model, tag or end user, over recent days or a month.

    llmq spend [--by tenant|model|tag|user] [--since 7d | --month YYYY-MM] [--top N] [--json]

Read from the ledger's spend rows in ``LLMQ_REDIS_URL`` (kept per UTC day and month; each
dimension keeps its top values by spend in rows of their own and sums the rest as ``other``:
``[spend]`` in ``LLMQ_CONFIG``). Without ``--since`` or ``--month``: the current UTC month.
"""

from __future__ import annotations

import argparse
import re
import sys
from typing import TYPE_CHECKING

from llmq.commands.budget import parse_month
from llmq.commands.table import print_table, usd
from workers.connections.redisclient import redis_client

if TYPE_CHECKING:
    from workers.accounting.spendreport import SpendReport

_SINCE = re.compile(r"^([1-9][0-9]{0,2})d$")


def _since(raw: str) -> int:
    match = _SINCE.match(raw)
    if not match:
        raise argparse.ArgumentTypeError(f"{raw!r} is not a number of days like 7d (today is 1d)")
    return int(match.group(1))


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("spend", help="spend by tenant, model, tag or user")
    p.add_argument("--by", choices=["tenant", "model", "tag", "user"], default="tenant")
    when = p.add_mutually_exclusive_group()
    when.add_argument("--since", type=_since, metavar="Nd", help="the last N UTC days, today included")
    when.add_argument("--month", type=parse_month, help="one UTC month (default: the current one)")
    p.add_argument("--top", type=int, metavar="N", help="show the N largest rows; the rest adds to other")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)


def _print(report: SpendReport) -> None:
    period = report.start if report.start == report.end else f"{report.start} .. {report.end}"
    print(f"Spend by {report.by}, {period} (UTC)")
    total = report.total_usd
    rows = [(report.by.upper(), "SPENT", "SHARE")]
    for row in report.rows:
        rows.append((row.value, usd(row.spent_usd), f"{100 * row.spent_usd / total:.1f}%" if total else "-"))
    if report.other_usd:
        rows.append(("(other)", usd(report.other_usd), f"{100 * report.other_usd / total:.1f}%" if total else "-"))
    print_table(rows, numeric=True)
    note = " (a job with several tags counts under each)" if report.by == "tag" else ""
    print(f"total spend in the period: {usd(total)}{note}")


def run(args: argparse.Namespace) -> int:
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    from llmq.commands.budget import build_ledger
    from workers.llm.errors import ConfigurationError
    from workers.settings import get_settings

    if args.top is not None and args.top < 1:
        print("llmq spend: --top must be at least 1", file=sys.stderr)
        return 2
    url = get_settings().redis_url
    client = redis_client(
        url, max_connections=4, socket_connect_timeout=2.0, socket_timeout=10.0, retry=Retry(NoBackoff(), 1)
    )
    try:
        ledger = build_ledger(client)
        report = ledger.report(args.by, days=args.since, month=args.month, top=args.top)
    except (ConfigurationError, ValueError) as exc:
        print(f"llmq spend: {exc}", file=sys.stderr)
        return 2
    finally:
        client.close()
    if args.json:
        print(report.model_dump_json(indent=2))
    else:
        _print(report)
    return 0

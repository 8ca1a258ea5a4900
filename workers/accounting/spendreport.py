"""Spend by tenant, model, tag and end user, per UTC day and month: the rows and how they are read.

Every settlement adds its cost (in the ledger's settle script, the same round trip) to one row per
dimension value of the call: its tenant, the model that answered, each of its tags, its user. A
row is a member of a sorted set per dimension and period (``<prefix>:spend:2026-12-07:tag``, and
``...:2026-12:tag`` for the month), scored in micro-USD.

Cardinality is bounded by a **top-K by spend** per dimension and period (``[spend]`` in the
config; :data:`DEFAULT_ROWS`), not by a list of allowed values: tags are chosen by whoever writes a
producer and end-user ids are unbounded by nature, so no configuration can list them ahead of time,
while "who spent the most" is exactly the question a bounded report must still answer. A value
without a row gets one while fewer than K exist; once K exist it takes the smallest row when its
own amount is larger (that row's spend moves to ``other``), else its amount goes to ``other``.
Totals stay exact (the rows plus ``other`` always sum to what was charged); a value that lost its
row and came back shows what it spent since. A value with a limit (stored by ``llmq budget set
--tag``, or in the config's ``[budget.tags]``/``[budget.users]``) is pinned: it always keeps its row. Day rows are kept ``days`` days (default 120), month rows as
long as the ledger's months (400 days).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import date, timedelta
from typing import Literal

import redis
from pydantic import BaseModel

from workers.accounting.money import from_micros

__all__ = [
    "DEFAULT_DAYS",
    "DEFAULT_ROWS",
    "DIMENSIONS",
    "Dimension",
    "SpendReport",
    "SpendRow",
    "days_back",
    "other_key",
    "read_report",
    "rows_key",
]

Dimension = Literal["tenant", "model", "tag", "user"]
DIMENSIONS: tuple[Dimension, ...] = ("tenant", "model", "tag", "user")
#: Rows of their own per dimension and period (the rest is summed as ``other``).
DEFAULT_ROWS: Mapping[Dimension, int] = {"tenant": 1000, "model": 200, "tag": 500, "user": 1000}
#: How long day rows are kept.
DEFAULT_DAYS = 120


def rows_key(prefix: str, period: str, dimension: str) -> str:
    """The sorted set of one dimension's rows for a day (``YYYY-MM-DD``) or a month (``YYYY-MM``)."""
    return f"{prefix}:spend:{period}:{dimension}"


def other_key(prefix: str, period: str) -> str:
    """The hash of what each dimension spent outside its rows in that period."""
    return f"{prefix}:spend:{period}:other"


def days_back(today: date, days: int) -> list[str]:
    """``today`` and the ``days - 1`` days before it, oldest first, as ``YYYY-MM-DD``."""
    return [f"{today - timedelta(days=n):%Y-%m-%d}" for n in reversed(range(days))]


class SpendRow(BaseModel):
    value: str
    spent_usd: float


class SpendReport(BaseModel):
    """Spend by one dimension over some UTC days or one month, largest first."""

    by: Dimension
    #: The first and last period read (days ``YYYY-MM-DD``, or the month twice).
    start: str
    end: str
    rows: list[SpendRow]
    #: Spent by values without a row of their own (past the top-K, or beyond ``top``).
    other_usd: float
    #: Everything charged in the period (the tenant rows and their ``other``): with several tags
    #: per job, tag rows can add up to more than this; jobs without tags or user are in no such row.
    total_usd: float


def read_report(
    client: redis.Redis, prefix: str, by: Dimension, periods: Sequence[str], top: int | None = None
) -> SpendReport:
    """Sum ``by``'s rows over ``periods`` (one round trip); ``top`` keeps that many rows, the rest
    is added to ``other``."""
    if not periods:
        raise ValueError("no period to report on")
    pipe = client.pipeline(transaction=False)
    for period in periods:
        pipe.zrange(rows_key(prefix, period, by), 0, -1, withscores=True)
        pipe.hmget(other_key(prefix, period), [by, "tenant"])
        if by != "tenant":
            pipe.zrange(rows_key(prefix, period, "tenant"), 0, -1, withscores=True)
    replies = pipe.execute()
    sums: dict[str, int] = {}
    other = total = 0
    step = 2 if by == "tenant" else 3
    for i in range(0, len(replies), step):
        rows, (outside, tenants_outside) = replies[i], replies[i + 1]
        for value, score in rows:
            name = value.decode() if isinstance(value, bytes) else str(value)
            sums[name] = sums.get(name, 0) + int(score)
        other += int(outside or 0)
        tenant_rows = rows if by == "tenant" else replies[i + 2]
        total += sum(int(score) for _, score in tenant_rows) + int(tenants_outside or 0)
    ranked = sorted(sums.items(), key=lambda item: (-item[1], item[0]))
    if top is not None:
        other += sum(micros for _, micros in ranked[top:])
        ranked = ranked[:top]
    return SpendReport(
        by=by,
        start=periods[0],
        end=periods[-1],
        rows=[SpendRow(value=v, spent_usd=float(from_micros(m))) for v, m in ranked],
        other_usd=float(from_micros(other)),
        total_usd=float(from_micros(total)),
    )

"""A queue's schedule as numbers: per class and tenant, how many jobs wait, run, and since when.

Read from the scheduler's state (``workers/connections/schedule.py``) with a handful of commands,
for ``llmq queues`` and the worker's queue metrics: the rings and blocked sets name the tenants
with queued work, each list's tail is its oldest job, the held hash names what runs. Not atomic
across those reads (a job may be counted queued and running in the same view); nothing here writes.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from workers.connections.schedule import HELD_KEY, attributes_of, queue_prefix, tenant_list
from workers.contract.schedule import PRIORITIES

__all__ = ["ClassView", "QueueView", "TenantView", "queue_view"]


@dataclass
class TenantView:
    """One tenant in one class."""

    priority: str
    tenant: str
    #: waiting in the schedule (parked ones included)
    queued: int = 0
    #: held by workers (running, or fetched and about to run)
    running: int = 0
    #: of ``queued``: waiting for a slot of their concurrency key
    parked: int = 0
    #: the tenant runs its max_concurrency: its queued jobs wait for one of its slots
    at_limit: bool = False
    #: seconds since the oldest queued job was submitted (None: none queued, or unknown)
    oldest_wait_s: float | None = None


@dataclass
class ClassView:
    priority: str
    queued: int = 0
    running: int = 0
    oldest_wait_s: float | None = None


@dataclass
class QueueView:
    queue: str
    classes: list[ClassView]
    tenants: list[TenantView]
    #: messages on the queue's own list, not yet moved into the schedule (producers without the
    #: scheduling transport); the next fetch moves them
    unscheduled: int = 0
    at: float = field(default_factory=time.time)

    @property
    def queued(self) -> int:
        return sum(c.queued for c in self.classes) + self.unscheduled

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self), "queued": self.queued}


def _submitted_at(payload: bytes | None) -> float | None:
    if not payload:
        return None
    try:
        header = json.loads(payload)["headers"]["llmq"]
        at = header.get("submitted_at")
        return float(at) if isinstance(at, int | float) else None
    except (ValueError, KeyError, TypeError):
        return None


def _older(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else max(a, b)


def queue_view(client: Any, queue: str, now: float | None = None) -> QueueView:
    """The schedule of ``queue`` on ``client`` (a sync redis-py client of the broker's Redis)."""
    now = time.time() if now is None else now
    prefix = queue_prefix(queue)
    rows: dict[tuple[str, str], TenantView] = {}

    def row(priority: str, tenant: str) -> TenantView:
        return rows.setdefault((priority, tenant), TenantView(priority, tenant))

    pipe = client.pipeline(transaction=False)
    for priority in PRIORITIES:
        pipe.zrange(f"{prefix}ring:{priority}", 0, -1)
    pipe.smembers(f"{prefix}blocked").smembers(f"{prefix}parkedkeys").hgetall(HELD_KEY).llen(queue)
    *rings, blocked, parked_keys, held, unscheduled = pipe.execute()
    waiting: set[tuple[str, str]] = set()
    for name, members in zip(PRIORITIES, rings, strict=True):
        waiting.update((name, _text(t)) for t in members)
    blocked_tenants = [_text(t) for t in blocked]
    if blocked_tenants:
        pipe = client.pipeline(transaction=False)
        for tenant in blocked_tenants:
            pipe.smembers(f"{prefix}blk:{tenant}")
        for tenant, classes in zip(blocked_tenants, pipe.execute(), strict=True):
            for klass in classes:
                waiting.add((_text(klass), tenant))
                row(_text(klass), tenant).at_limit = True
    ordered = sorted(waiting)
    if ordered:
        pipe = client.pipeline(transaction=False)
        for klass, tenant in ordered:
            pipe.llen(tenant_list(queue, klass, tenant)).lindex(tenant_list(queue, klass, tenant), -1)
        replies = pipe.execute()
        for i, (klass, tenant) in enumerate(ordered):
            view = row(klass, tenant)
            view.queued += int(replies[2 * i])
            at = _submitted_at(replies[2 * i + 1])
            view.oldest_wait_s = _older(view.oldest_wait_s, None if at is None else max(0.0, now - at))
    keys = [_text(k) for k in parked_keys]
    if keys:
        pipe = client.pipeline(transaction=False)
        for key in keys:
            pipe.llen(f"{prefix}park:{key}").lindex(f"{prefix}park:{key}", -1)
        replies = pipe.execute()
        for i, key in enumerate(keys):
            oldest = replies[2 * i + 1]
            if not oldest:
                continue
            try:
                found = attributes_of(json.loads(oldest))
            except ValueError:
                continue
            view = row(found.priority, key.split(":", 1)[0])
            count = int(replies[2 * i])
            view.queued += count
            view.parked += count
            at = _submitted_at(oldest)
            view.oldest_wait_s = _older(view.oldest_wait_s, None if at is None else max(0.0, now - at))
    for value in held.values():
        parts = _text(value).split("\t")
        if len(parts) == 4 and parts[0] == prefix:
            row(parts[1], parts[2]).running += 1
    tenants = sorted(
        rows.values(), key=lambda v: (PRIORITIES.index(v.priority) if v.priority in PRIORITIES else 9, v.tenant)
    )
    classes = []
    for name in PRIORITIES:
        mine = [v for v in tenants if v.priority == name]
        total = ClassView(name, sum(v.queued for v in mine), sum(v.running for v in mine))
        for v in mine:
            total.oldest_wait_s = _older(total.oldest_wait_s, v.oldest_wait_s)
        classes.append(total)
    return QueueView(queue, classes, tenants, unscheduled=int(unscheduled), at=now)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value

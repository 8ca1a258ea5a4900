"""A queue's schedule as numbers: per class and tenant, how many jobs wait, run, and since when.

Read from the scheduler's state (``workers/connections/schedule.py``) in one step (``lua/view.lua``),
for ``llmq queues``, the gateway's ``/v1/queues`` and the worker's queue metrics: the rings and
blocked sets name the tenants with queued work, each list's tail is its oldest job, the parked
counts are kept per class and tenant, the held hash names what runs. Nothing here writes.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from workers.connections.schedule import VIEW, attributes_of, queue_prefix, script
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

    @property
    def running(self) -> int:
        return sum(c.running for c in self.classes)

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self), "queued": self.queued, "running": self.running}


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
    """The schedule of ``queue`` on ``client`` (a sync redis-py client of the broker's Redis), read in
    one step (:data:`~workers.connections.schedule.VIEW`): a job a worker takes meanwhile is counted
    queued or running, never both nor neither."""
    now = time.time() if now is None else now
    rows: dict[tuple[str, str], TenantView] = {}

    def row(priority: str, tenant: str) -> TenantView:
        return rows.setdefault((priority, tenant), TenantView(priority, tenant))

    def waited(view: TenantView, payload: bytes | None) -> None:
        at = _submitted_at(payload)
        view.oldest_wait_s = _older(view.oldest_wait_s, None if at is None else max(0.0, now - at))

    found = client.register_script(script(VIEW))(keys=[queue, queue_prefix(queue)], client=client)
    unscheduled, lists, limited, parks, parked, held = found
    for i in range(0, len(lists), 4):
        view = row(_text(lists[i]), _text(lists[i + 1]))
        view.queued += int(lists[i + 2])
        waited(view, lists[i + 3] or None)
    for i in range(0, len(limited), 2):
        row(_text(limited[i]), _text(limited[i + 1])).at_limit = True
    for i in range(0, len(parked), 2):
        klass, _, tenant = _text(parked[i]).partition("\t")
        view = row(klass, tenant)
        view.queued += int(parked[i + 1])
        view.parked += int(parked[i + 1])
    for i in range(0, len(parks), 2):
        try:
            oldest = attributes_of(json.loads(parks[i + 1]))
        except (ValueError, AttributeError):
            continue
        waited(row(oldest.priority, _text(parks[i]).split(":", 1)[0]), parks[i + 1])
    for i in range(0, len(held), 3):
        row(_text(held[i]), _text(held[i + 1])).running += int(held[i + 2])
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

"""A job's scheduling attributes on the wire (its class, tenant and concurrency key) and the routes
file's ``[scheduling]`` and ``[tenants]`` tables.

The broker schedules by these without reading the job itself: every producer copies them into one
Celery message header, :data:`SCHED_HEADER`, which the Redis transport's scripts read where they
route and take a message (``workers/connections/schedule.py``), and a RabbitMQ producer maps the
class to a queue (:func:`class_queue`). Design and trade-offs: ``docs/scheduling.md``.
"""

from __future__ import annotations

import difflib
import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = [
    "CONCURRENCY_KEY_PATTERN",
    "DEFAULT_CLASS_WEIGHTS",
    "DEFAULT_PRIORITY",
    "PRIORITIES",
    "SCHED_HEADER",
    "Priority",
    "SchedulingConfig",
    "TenantConfig",
    "class_queue",
    "class_queues",
    "priority_error",
    "sched_header",
]

#: The scheduling classes, most urgent first.
Priority = Literal["interactive", "normal", "bulk"]
PRIORITIES: tuple[Priority, ...] = ("interactive", "normal", "bulk")
DEFAULT_PRIORITY: Priority = "normal"
#: How the classes share the workers while all of them have work waiting (``[scheduling] weights``).
DEFAULT_CLASS_WEIGHTS: dict[Priority, float] = {"interactive": 8.0, "normal": 4.0, "bulk": 1.0}


def priority_error(value: object) -> str:
    """What is wrong with a priority that is not one of :data:`PRIORITIES`, with the nearest one
    (``'interactiv'``, ``'Bulk'``: did you mean ...?)."""
    allowed = ", ".join(repr(p) for p in PRIORITIES)
    message = f"priority must be one of {allowed}; got {value!r}"
    if isinstance(value, str):
        close = difflib.get_close_matches(value.strip().lower(), PRIORITIES, n=1, cutoff=0.6)
        if close:
            message += f" (did you mean {close[0]!r}?)"
    return message


#: The Celery message header that carries a job's scheduling attributes (a JSON object:
#: ``priority``, ``tenant``, ``concurrency_key`` when set, ``submitted_at``).
SCHED_HEADER = "llmq"

#: A concurrency key: no whitespace (key names and the scripts' records are built from it).
CONCURRENCY_KEY_PATTERN = r"^\S{1,200}$"
_KEY = re.compile(CONCURRENCY_KEY_PATTERN)


def sched_header(
    priority: str, tenant: str, concurrency_key: str | None, submitted_at: float | None
) -> dict[str, object]:
    """The :data:`SCHED_HEADER` value of a job with these attributes."""
    header: dict[str, object] = {"priority": priority, "tenant": tenant}
    if concurrency_key is not None:
        if not _KEY.fullmatch(concurrency_key):
            raise ValueError("a concurrency_key is 1-200 characters without whitespace")
        header["concurrency_key"] = concurrency_key
    if submitted_at is not None:
        header["submitted_at"] = submitted_at
    return header


def class_queue(queue: str, priority: str) -> str:
    """The RabbitMQ queue of a class: the job queue itself for ``normal`` (so a deployment's
    existing queue keeps its jobs), ``<queue>.interactive`` and ``<queue>.bulk`` for the others."""
    return queue if priority == "normal" else f"{queue}.{priority}"


def class_queues(queue: str) -> dict[Priority, str]:
    """Every class's RabbitMQ queue, most urgent first."""
    return {p: class_queue(queue, p) for p in PRIORITIES}


class SchedulingConfig(BaseModel):
    """The routes file's ``[scheduling]`` table: how classes share the workers, concurrency-key caps.

    Example::

        [scheduling]
        weights = { interactive = 8, normal = 4, bulk = 1 }   # shares while all three have work
        key_concurrency = 1           # running jobs per concurrency_key (per tenant and key)
        queue_full_retry_after_s = 2  # the Retry-After of a refusal for max_queued

        [scheduling.keys]             # caps of particular keys: exact, or a prefix ending in '*'
        "doc:*" = 3
        "user:vip" = 10
    """

    # strict: a weight or cap is a TOML number (``true`` was taken as 1, ``"3"`` as 3)
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    weights: dict[Priority, Annotated[float, Field(gt=0, le=1_000_000)]] = Field(default_factory=dict)
    key_concurrency: Annotated[int, Field(ge=1)] = 1
    keys: dict[str, Annotated[int, Field(ge=1)]] = Field(default_factory=dict)
    queue_full_retry_after_s: Annotated[float, Field(gt=0, le=3600)] = 2.0

    @field_validator("keys")
    @classmethod
    def _keys(cls, keys: dict[str, int]) -> dict[str, int]:
        for key in keys:
            if not _KEY.fullmatch(key) or "*" in key[:-1]:
                raise ValueError(f"{key!r} is not a concurrency key or a prefix ending in '*' (no whitespace)")
        return keys


class TenantConfig(BaseModel):
    """A ``[tenants.<name>]`` table (``[tenants."*"]``: the defaults for tenants not named)."""

    # strict: a weight or cap is a TOML number (``true`` was taken as 1, ``"3"`` as 3)
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    #: Its share of a class against other tenants with work in the class (default 1).
    weight: Annotated[float, Field(gt=0, le=1_000_000)] | None = None
    #: Most of its jobs running at once, across all workers.
    max_concurrency: Annotated[int, Field(ge=1)] | None = None
    #: Most of its jobs queued (not yet running); a submit past it is refused with QueueFullError.
    max_queued: Annotated[int, Field(ge=1)] | None = None
    #: Running jobs per concurrency key of this tenant (default: ``[scheduling] key_concurrency``).
    key_concurrency: Annotated[int, Field(ge=1)] | None = None


#: A ``[tenants.<name>]`` name: a tenant (as jobs name them) or ``*`` (whole: ``fullmatch``).
TENANT_NAME = re.compile(r"^(\*|[A-Za-z0-9_.-]{1,64})$")

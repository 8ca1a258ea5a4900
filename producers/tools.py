"""Which worker tools live workers have: read from the registry workers publish to Redis.

Producers (``Client``, ``AsyncClient``, so the gateway and batch runs too) refuse a job naming a
tool no live worker has registered, before anything is enqueued. The layout is the contract's
(``workers/contract/tools.py``): a set of worker ids and one expiring key per worker.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

import redis
import redis.asyncio as aredis

from producers.liveset import live_entries, live_entries_async
from workers.contract import TOOL_WORKERS_KEY, CompletionJob, ToolInfo, WorkerTools, worker_tools_key
from workers.contract.catalog import close_names

__all__ = ["LiveTools", "live_workers", "live_workers_async", "missing_tools_error"]

#: Seconds a producer trusts the names it saw (a name it has not seen is always looked up again).
CACHE_S = 5.0


def live_workers(client: redis.Redis) -> list[WorkerTools]:
    """The tool registries of the workers alive now (dead workers' ids are dropped from the set)."""
    return live_entries(client, TOOL_WORKERS_KEY, worker_tools_key, WorkerTools)


async def live_workers_async(client: aredis.Redis) -> list[WorkerTools]:
    return await live_entries_async(client, TOOL_WORKERS_KEY, worker_tools_key, WorkerTools)


def tools_by_name(workers: list[WorkerTools]) -> dict[str, tuple[ToolInfo, list[str]]]:
    """Each tool name -> (its description from one worker, the workers that have it)."""
    out: dict[str, tuple[ToolInfo, list[str]]] = {}
    for worker in workers:
        for info in worker.tools:
            entry = out.setdefault(info.name, (info, []))
            entry[1].append(worker.worker)
    return out


def missing_tools_error(
    job: CompletionJob, missing: list[str], known: Iterable[str] = ()
) -> tuple[str, list[dict[str, Any]]]:
    """The message and per-field errors of an ``InvalidJobError`` for tools no live worker has
    (``known``: the names live workers did register, for "did you mean")."""
    known = sorted(known)
    errors: list[dict[str, Any]] = []
    meant: list[str] = []
    for index, entry in enumerate(job.tools):
        if isinstance(entry, str) and entry in missing:
            close = close_names(entry, known)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            meant += [f"{entry!r} -> {close[0]!r}"] if close else []
            errors.append(
                {
                    "type": "unknown_tool",
                    "loc": ("tools", index),
                    "msg": f"no live worker has registered the tool {entry!r}{hint}",
                    "input": entry,
                }
            )
    names = ", ".join(repr(n) for n in missing)
    if len(missing) == 1 and meant:
        meant = [meant[0].split(" -> ")[1]]
    hint = f" (did you mean {', '.join(meant)}?)" if meant else ""
    return f"invalid job: tools: no live worker has registered {names}{hint}", errors


class LiveTools:
    """A producer's view of the live tool names, cached for :data:`CACHE_S` seconds."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._names: frozenset[str] = frozenset()
        self._at = -1e18

    def _fresh(self) -> bool:
        return self._clock() - self._at < CACHE_S

    @property
    def names(self) -> frozenset[str]:
        """The tool names live workers had registered when last read."""
        return self._names

    def _set(self, workers: list[WorkerTools]) -> None:
        self._names = frozenset(info.name for w in workers for info in w.tools)
        self._at = self._clock()

    def missing(self, client: redis.Redis, names: list[str]) -> list[str]:
        if not names:
            return []
        if not (self._fresh() and set(names) <= self._names):
            self._set(live_workers(client))
        return [n for n in names if n not in self._names]

    async def missing_async(self, client: aredis.Redis, names: list[str]) -> list[str]:
        if not names:
            return []
        if not (self._fresh() and set(names) <= self._names):
            self._set(await live_workers_async(client))
        return [n for n in names if n not in self._names]

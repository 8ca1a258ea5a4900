"""Per-process dicts keyed by model id, kept bounded: model ids come from jobs, so a stream of
distinct (or bogus) ids must not grow a worker's memory without end."""

from __future__ import annotations

from typing import TypeVar

__all__ = ["MAX_ENTRIES", "bounded_put"]

MAX_ENTRIES = 4096
_T = TypeVar("_T")


def bounded_put(cache: dict[str, _T], key: str, value: _T, limit: int = MAX_ENTRIES) -> None:
    """Insert, dropping the oldest entry first when a new key would pass ``limit``."""
    if key not in cache and len(cache) >= limit:
        del cache[next(iter(cache))]
    cache[key] = value

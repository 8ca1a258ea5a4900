"""A write Redis refuses at ``maxmemory`` (``noeviction``, as shipped): how both sides recognise it.

Redis answers ``OOM command not allowed when used memory > 'maxmemory'`` to every command that needs
memory while it is full (reads, deletes and expiries still work); redis-py raises
:class:`redis.OutOfMemoryError` for it, a refusal inside a Lua script carries the same text, and
kombu and Celery re-raise it in their own errors. A script is refused at its first write that needs
memory, so one whose first write is such a command is refused whole (nothing half applied).
"""

from __future__ import annotations

import redis

__all__ = ["OOM_TEXT", "refused_for_memory"]

#: What every refusal at ``maxmemory`` says, however it was wrapped.
OOM_TEXT = "> 'maxmemory'"


def refused_for_memory(exc: BaseException) -> bool:
    """True when ``exc`` (or anything it was raised from or during) is Redis refusing a write at
    ``maxmemory``."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, redis.OutOfMemoryError) or OOM_TEXT in str(current):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False

"""A private ``redis-server`` with a small ``maxmemory``, and ballast to fill it to a given level.

The ballast is plain string keys under ``ballast:`` (nothing of ours reads them): :meth:`FullRedis.fill`
adds them until Redis uses a given share of its ``maxmemory``; :meth:`FullRedis.fill_until_refused`
until Redis refuses a write (used above ``maxmemory``: every write that needs memory fails, as in
production when a Redis with ``noeviction`` fills up); :meth:`FullRedis.free` deletes them.
"""

from __future__ import annotations

from typing import Any

import redis

from llmq.localredis import ManagedRedis

__all__ = ["FullRedis", "memory"]

BALLAST = "ballast:"
CHUNK = 256 * 1024


def memory(client: redis.Redis) -> tuple[int, int]:
    """``(used, maxmemory)`` as Redis counts them against ``maxmemory``."""
    info: dict[str, Any] = client.info("memory")
    return int(info["used_memory"]) - int(info.get("mem_not_counted_for_evict", 0)), int(info["maxmemory"])


class FullRedis:
    """A redis-server child (``noeviction``, as shipped) limited to ``maxmemory_mb``; a context manager."""

    def __init__(self, maxmemory_mb: int = 32, *, durable: bool = False) -> None:
        self.server = ManagedRedis(durable=durable, extra_args=["--maxmemory", f"{maxmemory_mb}mb"])
        self.maxmemory = maxmemory_mb * 1_048_576
        self.client: redis.Redis | None = None
        self._next = 0

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def redis(self) -> redis.Redis:
        if self.client is None:
            self.client = redis.Redis.from_url(self.url)
        return self.client

    def start(self) -> FullRedis:
        self.server.start()
        return self

    def stop(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None
        self.server.stop()

    def __enter__(self) -> FullRedis:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def used_share(self) -> float:
        used, limit = memory(self.redis)
        return used / limit

    def _add(self, size: int) -> None:
        self.redis.set(f"{BALLAST}{self._next}", b"x" * size)
        self._next += 1

    def fill(self, share: float) -> float:
        """Add ballast until Redis uses at least ``share`` of its ``maxmemory`` (< 1); the share reached."""
        assert 0 < share < 1, share
        while True:
            used, limit = memory(self.redis)
            missing = int(share * limit) - used
            if missing <= 0:
                return used / limit
            self._add(max(1024, min(CHUNK, missing)))

    def fill_until_refused(self) -> None:
        """Fill Redis past its ``maxmemory`` (what a write that was let in just below the limit leaves):
        from now on every write that needs memory is refused, however small."""
        used, limit = memory(self.redis)
        self.redis.config_set("maxmemory", 2 * limit)
        try:
            while used <= limit + CHUNK:
                self._add(CHUNK)
                used, _ = memory(self.redis)
        finally:
            self.redis.config_set("maxmemory", limit)

    def squeeze(self) -> None:
        """Set ``maxmemory`` far below what Redis uses (1 MB: hold more than that first), so every write that needs memory is
        refused however memory moves meanwhile (a client's query buffer freed after a fill can take
        a Redis filled just past its limit back below it); :meth:`free` restores the limit."""
        self.redis.config_set("maxmemory", 1_048_576)

    def free(self) -> None:
        """Delete the ballast (DEL works at ``maxmemory``) and restore ``maxmemory``."""
        self.redis.config_set("maxmemory", self.maxmemory)
        keys = list(self.redis.scan_iter(f"{BALLAST}*", count=1000))
        if keys:
            self.redis.delete(*keys)

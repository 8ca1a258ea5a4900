"""The suite's count of queued messages (``tests/support/brokers.py``) counts each message once.

``SCAN`` may return a key more than once, and does when Redis shrinks its key table between two pages
(its cron does so ~0.1 s after many keys were deleted): ``test_redis_full``'s count, made right after
freeing a full Redis's ballast on a loaded machine, once saw the one queued message twice (reproduced
3 times in 80 with a 0.15 s pause between pages, the list holding one message each time). Here a
client repeats each page as that shrink can, on a real Redis.
"""

from __future__ import annotations

from typing import Any

import redis

from tests.support.brokers import queued_count, queued_payloads
from workers.connections.schedule import queue_prefix


class RepeatingScan(redis.Redis):
    """A client whose ``SCAN`` pages list each key twice: what a key-table shrink between pages does."""

    def scan(self, *args: Any, **kwargs: Any) -> Any:
        cursor, keys = super().scan(*args, **kwargs)
        return cursor, [*keys, *keys]


def test_a_key_scan_returns_twice_is_counted_once(redis_url: str, redis_client: redis.Redis) -> None:
    prefix = queue_prefix("llmq")
    redis_client.rpush(f"{prefix}l:normal:tenant-a", b"m1")
    redis_client.rpush(f"{prefix}l:bulk:tenant-b", b"m2", b"m3")
    redis_client.rpush(f"{prefix}park:tenant-a:key-1", b"m4")
    redis_client.rpush("llmq", b"m0")
    repeating = RepeatingScan.from_url(redis_url)
    try:
        assert sorted(queued_payloads(repeating, "llmq")) == [b"m0", b"m1", b"m2", b"m3", b"m4"]
        assert queued_count(repeating, "llmq") == 5
    finally:
        repeating.close()

"""Errors a producer raises before anything is enqueued.

Two kinds: the job itself is wrong (:class:`InvalidJobError`: fix it, a retry fails the same way),
or the queue cannot take it *now* (:class:`SubmitRefusedError`: nothing was registered, the same
submit later works). Every refusal shares the base, so a caller backs off on one class: ``llmq
batch`` pauses on it, the gateway answers it with ``Retry-After``, the CLI exits 75 (``EX_TEMPFAIL``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

__all__ = ["InvalidJobError", "QueueFullError", "RedisFullError", "SubmitRefusedError", "in_cause_chain"]


class InvalidJobError(ValueError):
    """The job did not validate; nothing was enqueued. ``errors`` lists each problem."""

    def __init__(self, message: str, errors: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.errors = errors or []


class SubmitRefusedError(Exception):
    """The queue refused the job for now; nothing was registered or enqueued (the same id can be
    submitted again). ``retry_after_s``: when a retry has a chance, ``None`` when unknown."""

    #: What the gateway answers (a subclass names its own: 429 for a quota, 503 for a full server).
    http_status: ClassVar[int] = 503
    #: The error ``code`` in the gateway's OpenAI-shaped body and in metrics labels.
    code: ClassVar[str] = "submit_refused"

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message, retry_after_s)
        self.message = message
        self.retry_after_s = retry_after_s

    def __str__(self) -> str:
        return self.message


class RedisFullError(SubmitRefusedError):
    """Redis is above its high watermark of ``maxmemory`` (or refused a write, out of memory): new
    jobs wait so that running ones keep room to finish. ``used_bytes``/``max_bytes`` as last read
    (``None`` when Redis could not be asked); ``setting`` names the URL of the Redis that is full."""

    code: ClassVar[str] = "redis_full"

    def __init__(
        self,
        message: str,
        retry_after_s: float | None = None,
        used_bytes: int | None = None,
        max_bytes: int | None = None,
        setting: str = "LLMQ_REDIS_URL",
    ) -> None:
        super().__init__(message, retry_after_s)
        self.args = (message, retry_after_s, used_bytes, max_bytes, setting)
        self.used_bytes = used_bytes
        self.max_bytes = max_bytes
        self.setting = setting


class QueueFullError(SubmitRefusedError):
    """The tenant already has ``max_queued`` jobs waiting (``[tenants.<name>] max_queued``): the gateway
    answers 429 with ``Retry-After``; ``llmq batch`` pauses and resumes."""

    http_status: ClassVar[int] = 429
    code: ClassVar[str] = "queue_full"

    def __init__(self, tenant: str, queued: int, max_queued: int, retry_after_s: float | None = None) -> None:
        message = f"queue full: tenant {tenant!r} has {queued} jobs queued (max_queued {max_queued})"
        if retry_after_s is not None:
            message += f"; retry in {retry_after_s:g} s"
        super().__init__(message, retry_after_s)
        self.args = (tenant, queued, max_queued, retry_after_s)
        self.tenant = tenant
        self.queued = queued
        self.max_queued = max_queued


def in_cause_chain(exc: BaseException, match: Callable[[BaseException], bool]) -> bool:
    """True when ``match`` holds for ``exc`` or anything it was raised from or during (kombu and
    Celery wrap redis-py's errors in their own)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if match(current):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False

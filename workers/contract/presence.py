"""What a running worker publishes about itself: the queue it consumes and the model catalog it accepts.

Each worker process writes one :class:`WorkerPresence` under :func:`worker_key` with a short TTL
it keeps refreshing, adds its id to the :data:`WORKERS_KEY` set, and stores its
:class:`~workers.contract.catalog.ModelCatalog` under :func:`catalog_key` (by content hash: workers
with one config share one key). A dead worker stops refreshing and its entry expires. Producers
read it to check model names before enqueueing and to say "no worker consumes queue X" when a
wait times out (``producers/catalog.py``).
"""

from __future__ import annotations

from pydantic import Field

from workers.contract.base import WireModel

__all__ = ["WORKERS_KEY", "WorkerPresence", "catalog_key", "worker_key"]

#: Set of the ids of workers that published a presence (some may be dead: check their key).
WORKERS_KEY = "llmq:workers"


def worker_key(worker_id: str) -> str:
    """The key holding one worker's :class:`WorkerPresence` JSON (expires unless refreshed)."""
    return f"llmq:worker:{worker_id}"


def catalog_key(digest: str) -> str:
    """The key holding a :class:`~workers.contract.catalog.ModelCatalog` JSON by its digest."""
    return f"llmq:catalog:{digest}"


class WorkerPresence(WireModel):
    worker: str
    #: The job queues (``LLMQ_QUEUE``) this worker consumes.
    queues: list[str] = Field(default_factory=list)
    #: Digest of its model catalog (:func:`catalog_key`).
    catalog: str
    #: Unix time of the last refresh.
    published_at: float = 0.0

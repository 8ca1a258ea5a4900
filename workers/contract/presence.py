"""What a running worker publishes about itself: the queue it consumes and the model catalog it accepts.

Each worker process writes one :class:`WorkerPresence` under :func:`worker_key` with a short TTL
it keeps refreshing, adds its id to the :data:`WORKERS_KEY` set, and stores its
:class:`~workers.contract.catalog.ModelCatalog` under :func:`catalog_key` (by content hash: workers
with one config share one key). A dead worker stops refreshing and its entry expires. Producers
read it to check model names before enqueueing and to say "no worker consumes queue X" when a
wait times out (``producers/catalog.py``). Each worker also keeps its catalog under
:func:`last_catalog_key` of each queue it consumes, for a week after it stops.
"""

from __future__ import annotations

from pydantic import Field

from workers.contract.base import WireModel

__all__ = [
    "BATCH_INTAKE_KEY",
    "LAST_CATALOG_TTL_S",
    "WORKERS_KEY",
    "BatchIntake",
    "WorkerPresence",
    "catalog_key",
    "last_catalog_key",
    "worker_key",
]

#: Set of the ids of workers that published a presence (some may be dead: check their key).
WORKERS_KEY = "llmq:workers"


def worker_key(worker_id: str) -> str:
    """The key holding one worker's :class:`WorkerPresence` JSON (expires unless refreshed)."""
    return f"llmq:worker:{worker_id}"


def catalog_key(digest: str) -> str:
    """The key holding a :class:`~workers.contract.catalog.ModelCatalog` JSON by its digest."""
    return f"llmq:catalog:{digest}"


#: How long the catalog the workers of a queue last ran with is kept after the last of them stopped.
LAST_CATALOG_TTL_S = 7 * 86400


def last_catalog_key(queue: str) -> str:
    """The catalog the workers of ``queue`` last ran with (JSON), kept :data:`LAST_CATALOG_TTL_S` after
    they stopped: while none runs, producers warn of names it would refuse (they do not refuse them)."""
    return f"llmq:catalog:last:{queue}"


#: List of the ids of jobs producers handed to the batch lane, in order (the batcher takes them).
BATCH_INTAKE_KEY = "llmq:{pbatch}:intake"


class BatchIntake(WireModel):
    """A worker runs a provider batcher that takes jobs straight from producers
    (``workers/runtime/batcher.py``): a job that may wait (``batch``) whose deadline leaves this
    room goes to the batch lane without a queue message."""

    #: A ``batch: "allow"`` job needs at least this long to its deadline (``[batch] live_margin_s``).
    allow_min_s: float
    #: A ``batch: "auto"`` job needs at least this long (``[batch] window_s + margin_s``).
    auto_min_s: float


class WorkerPresence(WireModel):
    worker: str
    #: The job queues (``LLMQ_QUEUE``) this worker consumes.
    queues: list[str] = Field(default_factory=list)
    #: Digest of its model catalog (:func:`catalog_key`).
    catalog: str
    #: Unix time of the last refresh.
    published_at: float = 0.0
    #: Set when its batcher takes jobs straight from producers (None: every job is a queue message).
    batch_intake: BatchIntake | None = None

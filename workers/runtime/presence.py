"""A worker's presence in Redis: the queue it consumes and its model catalog, kept fresh while it lives.

The layout is the contract's (``workers/contract/presence.py``): a key per worker with a TTL of
``ttl_s``, rewritten every ``interval_s`` by a daemon thread, the worker's id in a set, and the
catalog under its digest. Producers check model names against it before enqueueing and name a
queue no worker consumes when a wait times out.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time

import redis

from workers.contract.catalog import ModelCatalog
from workers.contract.presence import (
    LAST_CATALOG_TTL_S,
    WORKERS_KEY,
    BatchIntake,
    WorkerPresence,
    catalog_key,
    last_catalog_key,
    worker_key,
)

__all__ = ["PresencePublisher"]

log = logging.getLogger("llmq.worker")


class PresencePublisher:
    def __init__(
        self,
        client: redis.Redis,
        worker_id: str,
        queues: list[str],
        catalog: ModelCatalog,
        *,
        interval_s: float = 10.0,
        ttl_s: int = 30,
        batch_intake: BatchIntake | None = None,
    ) -> None:
        self._client = client
        self.worker_id = worker_id
        self._catalog_json = catalog.model_dump_json()
        self._catalog_key = catalog_key(catalog.digest())
        self._presence = WorkerPresence(
            worker=worker_id, queues=queues, catalog=catalog.digest(), batch_intake=batch_intake
        )
        self._interval_s = interval_s
        self._ttl_s = ttl_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def publish(self, *, first: bool = False) -> None:
        self._presence.published_at = time.time()
        pipe = self._client.pipeline(transaction=False)
        pipe.set(self._catalog_key, self._catalog_json, ex=self._ttl_s)  # before the presence naming it
        pipe.set(worker_key(self.worker_id), self._presence.model_dump_json(), ex=self._ttl_s)
        pipe.sadd(WORKERS_KEY, self.worker_id)
        for queue in self._presence.queues:  # what producers judge by while no worker runs (a warning)
            if first:
                pipe.set(last_catalog_key(queue), self._catalog_json, ex=LAST_CATALOG_TTL_S)
            else:
                pipe.expire(last_catalog_key(queue), LAST_CATALOG_TTL_S)
        pipe.execute()

    def start(self) -> None:
        self.publish(first=True)  # before the first job: a producer may check right after the worker is up
        self._thread = threading.Thread(target=self._run, name="llmq-presence", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            try:
                self.publish()
            except redis.RedisError as exc:
                log.warning("could not refresh this worker's presence (%s); retrying", exc)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(3)
        with contextlib.suppress(redis.RedisError):
            pipe = self._client.pipeline(transaction=False)
            pipe.delete(worker_key(self.worker_id))
            pipe.srem(WORKERS_KEY, self.worker_id)
            pipe.execute()

"""Publishing a worker's tool registry to Redis, kept fresh while the worker lives.

The layout is the contract's (``workers/contract/tools.py``): a key per worker with a TTL of
``ttl_s``, rewritten every ``interval_s`` by a daemon thread, and the worker's id in a set.
Producers refuse jobs naming a tool no live worker has; ``llmq tools list`` shows the union.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time

import redis

from workers.contract import TOOL_WORKERS_KEY, ToolInfo, WorkerTools, worker_tools_key

__all__ = ["RegistryPublisher"]

log = logging.getLogger("llmq.tools")


class RegistryPublisher:
    def __init__(
        self,
        client: redis.Redis,
        worker_id: str,
        tools: list[ToolInfo],
        *,
        interval_s: float = 10.0,
        ttl_s: int = 30,
    ) -> None:
        self._client = client
        self.worker_id = worker_id
        self._payload = WorkerTools(worker=worker_id, tools=tools)
        self._interval_s = interval_s
        self._ttl_s = ttl_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def publish(self) -> None:
        self._payload.published_at = time.time()
        pipe = self._client.pipeline(transaction=False)
        pipe.set(worker_tools_key(self.worker_id), self._payload.model_dump_json(), ex=self._ttl_s)
        pipe.sadd(TOOL_WORKERS_KEY, self.worker_id)
        pipe.execute()

    def start(self) -> None:
        self.publish()  # before the first job: a producer may check right after the worker is up
        self._thread = threading.Thread(target=self._run, name="llmq-tools-publisher", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            try:
                self.publish()
            except redis.RedisError as exc:
                log.warning("could not refresh this worker's tool registry (%s); retrying", exc)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(3)
        with contextlib.suppress(redis.RedisError):
            pipe = self._client.pipeline(transaction=False)
            pipe.delete(worker_tools_key(self.worker_id))
            pipe.srem(TOOL_WORKERS_KEY, self.worker_id)
            pipe.execute()

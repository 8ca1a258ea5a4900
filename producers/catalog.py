"""Which model names the workers accept, as a producer sees it, and the check every submit makes.

Where the catalog comes from, in this order:

1. **What the live workers of this queue publish** (``workers/contract/presence.py``): each worker
   writes its catalog at start and keeps it fresh while it runs, so a config change reaches the
   producers as soon as the workers run with it (within :data:`CACHE_S`; a name the cached catalog
   does not know is looked up again at once). During a rolling deploy the union of what every
   live worker accepts is accepted.
2. **No worker runs yet** (a fresh deployment, workers scaled to zero, all restarting): the config
   file the workers will read (``LLMQ_CONFIG``), when this producer has it, re-read when it changes.
   It has no price table, so unpriced near misses are left to the worker.
3. Neither: only what holds for any configuration is checked (the job's own validation); a name
   is never refused on a guess, and the worker still refuses an unknown one, with the same words.
   What the workers of the queue last ran with (kept a week after they stopped,
   :func:`~workers.contract.presence.last_catalog_key`) only warns: a name it would refuse is
   logged once (``llmq.producer``; ``llmq submit`` shows it), the job is enqueued.

The rule itself is the contract's (:meth:`~workers.contract.catalog.ModelCatalog.resolve`), the one
the worker resolves a job with.
"""

from __future__ import annotations

import logging
import os
import time
import tomllib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import redis
import redis.asyncio as aredis

from producers.liveset import live_entries, live_entries_async
from workers.contract import CompletionJob
from workers.contract.catalog import Judgement, ModelCatalog, catalog_from_config
from workers.contract.presence import (
    WORKERS_KEY,
    BatchIntake,
    WorkerPresence,
    catalog_key,
    last_catalog_key,
    worker_key,
)
from workers.contract.providers import ProviderInfo

__all__ = ["CACHE_S", "LiveCatalog", "catalog_problems", "live_presences", "live_presences_async"]

log = logging.getLogger("llmq.producer")

#: Seconds a producer trusts the catalog it read.
CACHE_S = 5.0
#: A name the cached catalog refuses is looked up again, at most this often.
RECHECK_S = 0.5
#: Names whose judgement is kept (per catalog).
JUDGED_MAX = 4096


def live_presences(client: redis.Redis) -> list[WorkerPresence]:
    """What the workers alive now published (``producers/liveset.py``)."""
    return live_entries(client, WORKERS_KEY, worker_key, WorkerPresence)


async def live_presences_async(client: aredis.Redis) -> list[WorkerPresence]:
    return await live_entries_async(client, WORKERS_KEY, worker_key, WorkerPresence)


def catalog_problems(
    job: CompletionJob, catalog: ModelCatalog, judge: Callable[[str], Judgement] | None = None
) -> list[dict[str, Any]]:
    """Every model name of ``job`` the catalog refuses, as ``InvalidJobError`` entries (loc, msg, type).

    ``judge``: the catalog's :meth:`~ModelCatalog.judge`, or a cache of it (:class:`LiveCatalog`'s)."""
    judge = judge or catalog.judge
    infos: dict[str, ProviderInfo] | None = None  # a route's named providers are checked by their type
    errors: list[dict[str, Any]] = []
    refs: list[tuple[tuple[str | int, ...], str]] = [(("model",), job.model)]
    refs += [(("fallbacks", i), ref) for i, ref in enumerate(job.fallbacks)] if job.fallbacks else []
    for loc, ref in refs:
        model_ids, unknown, near = judge(ref)
        if unknown is not None:
            errors.append({"type": unknown.code, "loc": loc, "msg": str(unknown), "input": ref})
            continue
        for model_id, meant in near:
            message = catalog.unpriced_message(model_id, meant)
            if ref in catalog.routes:  # a typo in the workers' config, not in the job
                message = f"route {ref!r} (the workers' config) names {model_id}: {message}"
            errors.append({"type": "unpriced_model", "loc": loc, "msg": message, "input": ref})
        for model_id in model_ids:
            if ":" not in ref:  # an explicit id's parameters were checked with the job itself
                infos = infos if infos is not None else catalog.provider_infos()
                errors += [
                    {"type": "unsupported_parameter", "loc": loc, "msg": str(p), "input": ref}
                    for p in job.capability_problems(model_id, infos)
                ]
    return errors


class LiveCatalog:
    """A producer's view of the workers' catalog for one queue (see the module docstring)."""

    def __init__(
        self,
        queue: str,
        *,
        config_path: str | None = None,
        default_model: str = "openai:gpt-4o-mini",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.queue = queue
        self.config_path = config_path
        self.default_model = default_model
        self._clock = clock
        self._catalog: ModelCatalog | None = None
        self._at = -1e18
        self._by_digest: dict[str, ModelCatalog] = {}
        self._file: tuple[tuple[int, int, int], ModelCatalog | None] | None = None
        self._judged: dict[str, Judgement] = {}
        #: What the workers of the queue last ran with, while none runs and no config file says (warnings only).
        self._last: ModelCatalog | None = None
        self._last_raw: bytes | str | None = None
        self._warned: set[str] = set()
        #: What a live worker's batcher takes straight from producers (None: no such worker).
        self.batch_intake: BatchIntake | None = None

    # --- the check ------------------------------------------------------------------------------

    def problems(self, client: redis.Redis, job: CompletionJob) -> list[dict[str, Any]]:
        found = self._problems(self.get(client), job)
        if found and self._clock() - self._at >= RECHECK_S:  # a worker may have just started with it
            found = self._problems(self.get(client, fresh=True), job)
        if self._catalog is None and self._last is not None:
            self._warn(catalog_problems(job, self._last))
        return found

    async def problems_async(self, client: aredis.Redis, job: CompletionJob) -> list[dict[str, Any]]:
        found = self._problems(await self.get_async(client), job)
        if found and self._clock() - self._at >= RECHECK_S:
            found = self._problems(await self.get_async(client, fresh=True), job)
        if self._catalog is None and self._last is not None:
            self._warn(catalog_problems(job, self._last))
        return found

    def _warn(self, problems: list[dict[str, Any]]) -> None:
        """Names the workers that last ran on this queue would refuse: said once each, not refused
        (a config change may be on its way with the next worker)."""
        for problem in problems:
            text = f"{'.'.join(str(p) for p in problem['loc'])}: {problem['msg']}"
            if text in self._warned or len(self._warned) >= JUDGED_MAX:
                continue
            self._warned.add(text)
            log.warning(
                "warning: %s -- the workers that last ran on queue %r would refuse it; none runs now, so "
                "the job is enqueued (a worker will judge it when one starts)",
                text,
                self.queue,
            )

    def chain(self, job: CompletionJob) -> list[str]:
        """``job``'s chain as ``provider:model`` ids, route aliases and bare names resolved by the
        catalog :meth:`problems` last read (a name it cannot resolve is left as it is)."""
        if self._catalog is None:
            return job.chain
        out: list[str] = []
        for ref in job.chain:
            ids = self._judge(ref).ids
            out.extend(ids or [ref])
        return out

    def _problems(self, catalog: ModelCatalog | None, job: CompletionJob) -> list[dict[str, Any]]:
        return [] if catalog is None else catalog_problems(job, catalog, self._judge)

    def _judge(self, ref: str) -> Judgement:
        """The current catalog's judgement of ``ref``, cached until the catalog changes (~20 µs saved
        per submit: the price table's rules are a few hundred)."""
        found = self._judged.get(ref)
        if found is None:
            assert self._catalog is not None
            found = self._catalog.judge(ref)
            if len(self._judged) < JUDGED_MAX:  # refs come from callers: bound the memory
                self._judged[ref] = found
        return found

    # --- reading --------------------------------------------------------------------------------

    def _fresh(self) -> bool:
        return self._clock() - self._at < CACHE_S

    def get(self, client: redis.Redis, *, fresh: bool = False) -> ModelCatalog | None:
        """The catalog (cached :data:`CACHE_S`); None when nothing says what the workers accept."""
        if fresh or not self._fresh():
            alive = live_presences(client)
            missing = self._missing_digests(alive)
            if missing:
                self._store(missing, client.mget([catalog_key(d) for d in missing]))
            self._set(alive)
            if self._catalog is None:
                self._set_last(client.get(last_catalog_key(self.queue)))
        return self._catalog

    async def get_async(self, client: aredis.Redis, *, fresh: bool = False) -> ModelCatalog | None:
        if fresh or not self._fresh():
            alive = await live_presences_async(client)
            missing = self._missing_digests(alive)
            if missing:
                self._store(missing, await client.mget([catalog_key(d) for d in missing]))
            self._set(alive)
            if self._catalog is None:
                self._set_last(await client.get(last_catalog_key(self.queue)))
        return self._catalog

    def _set_last(self, raw: bytes | str | None) -> None:
        if raw != self._last_raw:  # parsed again only when it changed
            self._last_raw = raw
            try:
                self._last = None if raw is None else ModelCatalog.model_validate_json(raw)
            except ValueError:
                self._last = None

    def _mine(self, alive: list[WorkerPresence]) -> list[WorkerPresence]:
        return [p for p in alive if self.queue in p.queues]

    def _missing_digests(self, alive: list[WorkerPresence]) -> list[str]:
        return sorted({p.catalog for p in self._mine(alive)} - set(self._by_digest))

    def _store(self, digests: list[str], raws: Sequence[bytes | str | None]) -> None:
        for digest, raw in zip(digests, raws, strict=True):
            if raw is not None:  # content-addressed: the same digest never changes
                self._by_digest[digest] = ModelCatalog.model_validate_json(raw)

    def _set(self, alive: list[WorkerPresence]) -> None:
        self.batch_intake = next((p.batch_intake for p in self._mine(alive) if p.batch_intake is not None), None)
        merged: ModelCatalog | None = None
        for digest in sorted({p.catalog for p in self._mine(alive)} & set(self._by_digest)):
            one = self._by_digest[digest]
            merged = one if merged is None else merged.merged(one)
        current = merged if merged is not None else self._from_file()
        if current is not self._catalog and (current is None or self._catalog is None or current != self._catalog):
            self._judged = {}  # judgements of the catalog that was
        self._catalog = current
        self._at = self._clock()

    def _from_file(self) -> ModelCatalog | None:
        """The config file's catalog (read again when the file changed), or None."""
        if not self.config_path:
            return None
        try:
            stat = os.stat(self.config_path)
        except OSError:
            return None
        version = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
        if self._file is None or self._file[0] != version:
            try:
                data = tomllib.loads(Path(self.config_path).read_text())
                catalog: ModelCatalog | None = catalog_from_config(data, default_model=self.default_model)
            except (OSError, ValueError):  # unreadable or invalid: the worker says so at its start
                catalog = None
            self._file = (version, catalog)
        return self._file[1]

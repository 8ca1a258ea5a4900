"""The response cache and single flight in Redis: entries, their size bound, leads, purge.

An entry is the stored :class:`~workers.contract.CompletionResult` of a job that asked to be
cached (``llmq:{cache}:e:<member>``, a string with the entry's TTL), listed in an index (member ->
expiry) with its size. The leader stores it inside its terminal flush (plain writes in the round
trip that ends the job anyway: a miss costs one extra round trip, the lookup); the next lookup
forgets what expired and, while the total passes ``max_bytes``, evicts the entries closest to
expiry. Every key carries the ``{cache}`` hash tag (one Redis Cluster slot).

Single flight: the first cacheable job to miss takes the *lead* of its key (``...:lead:<member>``,
holding its job id) and calls upstream; identical jobs arriving meanwhile follow it
(:mod:`workers.jobs.singleflight`). The lead is ended by the leader's put (or release); a leader
that died is taken over by a follower (:meth:`ResponseCache.begin` with ``taking_over``), which the
follower decides from the leader's own claim lease: no second heartbeat is needed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Literal

import redis
from prometheus_client import CollectorRegistry, Counter, Gauge

from workers.accounting.metrics import Children
from workers.contract import CompletionResult
from workers.jobs.cachekey import CacheKey
from workers.jobs.events import Write

__all__ = ["Begin", "CacheMetrics", "CacheStats", "ResponseCache", "build_cache_metrics"]

PREFIX = "llmq:{cache}"


def _script(client: redis.Redis, name: str) -> Any:
    return client.register_script((resources.files("workers.jobs") / "lua" / f"{name}.lua").read_text())


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@dataclass(frozen=True, slots=True)
class Begin:
    """What a cacheable job does first: serve ``hit``, ``lead`` the call, or ``follow`` ``leader``."""

    kind: Literal["hit", "lead", "follow"]
    hit: CompletionResult | None = None
    leader: str | None = None


@dataclass(frozen=True, slots=True)
class CacheStats:
    bytes: int
    entries: int


@dataclass(frozen=True, slots=True)
class CacheMetrics:
    """``llmq_response_cache_*``: lookups by outcome, stores by outcome, size (as the last lookup of
    this process saw it), savings."""

    lookups: Counter
    stores: Counter
    bytes: Gauge
    entries: Gauge
    saved: Counter
    #: each labelled child looked up once (``workers/accounting/metrics.py``)
    looked_up: Children = field(init=False, repr=False, compare=False)
    stored: Children = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "looked_up", Children(self.lookups))
        object.__setattr__(self, "stored", Children(self.stores))

    def served(self, result: CompletionResult, source: Literal["hit", "shared"]) -> None:
        """An answer served without a call; ``result`` is the original, whose cost was saved."""
        self.looked_up(source).inc()
        if result.cost_usd:
            self.saved.inc(result.cost_usd)


def build_cache_metrics(registry: CollectorRegistry) -> CacheMetrics:
    return CacheMetrics(
        lookups=Counter(
            "llmq_response_cache_lookups_total",
            "Cacheable jobs by outcome: hit (stored answer), shared (an identical job's call), miss (called).",
            ["outcome"],
            registry=registry,
        ),
        stores=Counter(
            "llmq_response_cache_stores_total",
            "Answers of leading jobs: stored, not_storable (error, refusal...), too_large.",
            ["outcome"],
            registry=registry,
        ),
        bytes=Gauge("llmq_response_cache_bytes", "Bytes of answers in the response cache.", registry=registry),
        entries=Gauge("llmq_response_cache_entries", "Answers in the response cache.", registry=registry),
        saved=Counter(
            "llmq_response_cache_saved_dollars_total",
            "What the answers served from the cache or shared cost when they were called.",
            registry=registry,
        ),
    )


class ResponseCache:
    """The cache over one redis-py client (thread- and greenlet-safe).

    ``max_bytes`` bounds the values stored, together; an answer larger than ``max_entry_bytes`` is
    not stored. ``lead_ttl_ms`` only bounds a lead nobody ended or took over.
    """

    def __init__(
        self,
        client: redis.Redis,
        *,
        max_bytes: int = 64 * 1024 * 1024,
        max_entry_bytes: int = 1024 * 1024,
        lead_ttl_ms: int = 3_600_000,
        prefix: str = PREFIX,
        metrics: CacheMetrics | None = None,
    ) -> None:
        if not 0 < max_entry_bytes <= max_bytes:
            raise ValueError("max_entry_bytes must be positive and at most max_bytes")
        self.client = client
        self.max_bytes = max_bytes
        self.max_entry_bytes = max_entry_bytes
        self.lead_ttl_ms = lead_ttl_ms
        self.prefix = prefix
        self.metrics = metrics
        # what every lookup sends unchanged, encoded once (redis-py encodes each argument of each call)
        self._index_keys = [k.encode() for k in self._index]
        self._lookup_args = [str(lead_ttl_ms).encode(), str(max_bytes).encode(), self._entry_prefix.encode()]
        self._begin = _script(client, "cache_begin")
        self._release = _script(client, "cache_release")
        self._drop = _script(client, "cache_drop")

    # --- keys -------------------------------------------------------------------------------------

    @property
    def _entry_prefix(self) -> str:
        return f"{self.prefix}:e:"

    def _entry(self, key: CacheKey) -> str:
        return self._entry_prefix + key.member

    def _lead(self, key: CacheKey) -> str:
        return f"{self.prefix}:lead:{key.member}"

    @property
    def _index(self) -> list[str]:
        return [f"{self.prefix}:index", f"{self.prefix}:sizes", f"{self.prefix}:bytes"]

    # --- a job's operations -----------------------------------------------------------------------

    def begin(self, key: CacheKey, job_id: str, *, taking_over: str | None = None) -> Begin:
        """The stored answer, else the lead (this job calls), else who leads. ``taking_over``: a
        leader this job saw fail or die; the lead passes to this job unless another took it."""
        script, keys, args = self.begin_call(key, job_id, taking_over=taking_over)
        return self.parse_begin(script(keys=keys, args=args))

    def begin_call(
        self, key: CacheKey, job_id: str, *, taking_over: str | None = None
    ) -> tuple[Any, list[str], list[Any]]:
        """:meth:`begin` as ``(script, keys, args)``, for a caller that sends it in a round trip it
        makes anyway (the job's claim: ``JobStore.claim_with``); read the reply with :meth:`parse_begin`."""
        lead_ttl, max_bytes, entry_prefix = self._lookup_args
        keys: list[Any] = [self._entry(key), self._lead(key), *self._index_keys]
        args: list[Any] = [job_id, lead_ttl, taking_over or b"", key.member, max_bytes, entry_prefix]
        return self._begin, keys, args

    def parse_begin(self, reply: Any) -> Begin:
        kind = _s(reply[0])
        if self.metrics is not None:
            self.metrics.bytes.set(int(reply[2]))
            self.metrics.entries.set(int(reply[3]))
        if kind == "hit":
            return Begin("hit", hit=CompletionResult.model_validate_json(reply[1]))
        if kind == "lead":
            return Begin("lead")
        return Begin("follow", leader=_s(reply[1]))

    def store_writes(self, key: CacheKey, raw: str, now_ms: int) -> list[Write] | None:
        """The writes that store an answer (its result JSON, ``raw``) and end the lead, run inside the
        leader's terminal flush (fenced by its claim: a leader that lost its claim writes nothing, so
        the lead it deletes is its own); None when the answer is over ``max_entry_bytes``. The size
        bound is kept by the next :meth:`begin`."""
        size = len(raw.encode())
        if size > self.max_entry_bytes:
            return None
        ttl_ms = key.spec.ttl_s * 1000
        index, sizes, total = self._index
        return [
            ("SET", self._entry(key), raw, "PX", ttl_ms),
            ("ZADD", index, now_ms + ttl_ms, key.member),
            # added to the member's size, not set: a second store of one key (two leaders, rare)
            # counts twice in both, and dropping the member takes all of it back out of the total
            ("HINCRBY", sizes, key.member, size),
            ("INCRBY", total, size),
            ("DEL", self._lead(key)),
        ]

    def put(self, key: CacheKey, result: CompletionResult) -> bool:
        """Store ``result`` now, outside a terminal flush (administration, tests); False if too large."""
        writes = self.store_writes(key, result.model_dump_json(), int(time.time() * 1000))
        if writes is None:
            return False
        pipe = self.client.pipeline(transaction=True)
        for command in writes:
            pipe.execute_command(*command)
        pipe.execute()
        return True

    def release_writes(self, key: CacheKey) -> list[Write]:
        """The write that ends a lead without an answer, run inside the leader's terminal flush (fenced
        by its claim, like :meth:`store_writes`: the lead it deletes is its own)."""
        return [("DEL", self._lead(key))]

    def release(self, key: CacheKey, job_id: str) -> None:
        """End ``job_id``'s lead without an answer (failed, cancelled, not cacheable)."""
        self._release(keys=[self._lead(key)], args=[job_id])

    # --- administration ---------------------------------------------------------------------------

    def purge(self, tenant: str | None = None, *, batch: int = 500) -> int:
        """Delete every entry, or those of one tenant (entries of global scope belong to none);
        returns how many were deleted."""
        pattern = "*" if tenant is None else f"t:{tenant}:*"
        dropped = 0
        cursor = 0
        while True:
            cursor, found = self.client.zscan(self._index[0], cursor, match=pattern, count=batch)
            members = [_s(m) for m, _ in found]
            if members:
                dropped += int(self._drop(keys=self._index, args=[self._entry_prefix, *members]))
            if cursor == 0:
                return dropped

    def stats(self) -> CacheStats:
        pipe = self.client.pipeline(transaction=False)
        pipe.get(self._index[2])
        pipe.zcard(self._index[0])
        total, entries = pipe.execute()
        return CacheStats(int(total or 0), int(entries))

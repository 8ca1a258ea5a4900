"""One cacheable job's dealings with the response cache: served, shared, or leading and storing.

The pipeline asks :meth:`CachedRun.begin` once the job's chain is resolved and its messages
rendered, before any call: it returns the answer to serve (from the cache, or from an identical
job in flight that this one followed), or None when this job leads and calls upstream itself.
A clean answer (succeeded, no refusal, no content filter) is stored by :meth:`terminal_writes`
inside the job's terminal flush, which ends the lead whatever the answer (so a job submitted after
the result was seen calls again, not follows); an ending without a terminal flush (re-queued, fenced,
handed back, the flush failed) ends it through :meth:`end`, so followers never wait on a job that is gone.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import redis

from workers.contract import CompletionResult
from workers.jobs.cachekey import CacheKey
from workers.jobs.events import Write
from workers.jobs.responsecache import Begin, ResponseCache

__all__ = ["CachedRun", "Served", "storable"]

#: A result's fields that belong to the job, not to its answer: a served answer brings every other
#: one (so a field added to the result's answer is served without a line here).
_JOBS_OWN = frozenset(
    {
        "schema_version", "id", "status", "attempts", "cost_usd", "cached", "error", "timings", "tenant",
        "metadata", "tags", "user", "prompt",
    }
)  # fmt: skip

log = logging.getLogger("llmq.cache")


def storable(result: CompletionResult) -> bool:
    """An answer worth serving again: it succeeded, came from a call (not the cache), is not a
    refusal and was not stopped by a content filter. Errors, cut streams and invalid structured
    outputs end failed and are never here."""
    return (
        result.status == "succeeded"
        and not result.cached
        and result.refusal is None
        and result.finish_reason != "content_filter"
    )


@dataclass(frozen=True, slots=True)
class Served:
    """An answer this job serves without calling: ``hit`` (stored) or ``shared`` (followed)."""

    result: CompletionResult
    source: Literal["hit", "shared"]
    #: The answer's text this job already sent as deltas (a follower republishes the leader's).
    shown: str = ""


class CachedRun:
    def __init__(self, cache: ResponseCache, key: CacheKey, job_id: str) -> None:
        self.cache = cache
        self.key = key
        self.job_id = job_id
        #: This job holds the key's lead (it calls upstream; its ending must end the lead).
        self.leading = False
        #: The first lookup's answer when it was sent with the job's claim (one round trip less).
        self.first: Begin | None = None

    def begin(self, follow: Callable[[str], CompletionResult | None], shown: Callable[[], str] = str) -> Served | None:
        """The answer to serve, or None: this job leads. ``follow(leader)`` follows a leader's
        stream and returns its answer, or None when that leader failed or is gone; ``shown()``: the
        text it republished of that answer."""
        taking_over: str | None = None
        metrics = self.cache.metrics
        while True:
            begun, self.first = self.first or self.cache.begin(self.key, self.job_id, taking_over=taking_over), None
            if begun.kind == "hit" and begun.hit is not None:
                if metrics is not None:
                    metrics.served(begun.hit, "hit")
                return Served(begun.hit, "hit")
            if begun.kind == "lead":
                self.leading = True
                if metrics is not None:
                    metrics.looked_up("miss").inc()
                return None
            assert begun.leader is not None
            shared = follow(begun.leader)
            if shared is not None:
                if metrics is not None:
                    metrics.served(shared, "shared")
                return Served(shared, "shared", shown())
            log.info(
                "job %s: the job answering the same request (%s) failed or is gone; trying", self.job_id, begun.leader
            )
            taking_over = begun.leader

    def terminal_writes(self, result: CompletionResult, raw: str | None = None) -> list[Write]:
        """The writes that end the lead in the leader's terminal flush, storing ``result`` (``raw``: its
        JSON, when the caller has it) when it is storable; none when this job does not lead.

        The lead ends with the result's write, not after it: an identical job submitted by a caller
        who saw this result (a refusal, say) must call again, not follow a lead that has answered."""
        if not self.leading:
            return []
        metrics = self.cache.metrics
        if not storable(result):
            if metrics is not None:
                metrics.stored("not_storable").inc()
            return self.cache.release_writes(self.key)
        writes = self.cache.store_writes(self.key, raw or result.model_dump_json(), int(time.time() * 1000))
        if metrics is not None:
            metrics.stored("stored" if writes is not None else "too_large").inc()
        return writes if writes is not None else self.cache.release_writes(self.key)

    def flushed(self) -> None:
        """The terminal flush carrying :meth:`terminal_writes` succeeded: the lead is ended. Until then
        this job still leads, so a flush that fails leaves :meth:`end` to release the lead."""
        self.leading = False

    def end(self, result: CompletionResult | None) -> None:
        """The job ended with ``result`` (None: it did not end here: re-queued, fenced, handed back)
        without storing it: end the lead, so a follower takes over at once. Never raises."""
        if not self.leading:
            return
        self.leading = False
        metrics = self.cache.metrics
        if metrics is not None and result is not None:
            metrics.stored("not_storable").inc()
        try:
            self.cache.release(self.key, self.job_id)
        except redis.RedisError as exc:  # followers take the lead over once this job's claim is gone
            log.warning("job %s: could not end its response cache lead: %s", self.job_id, exc)


def served_result(result: CompletionResult, served: Served) -> CompletionResult:
    """``result`` (this job's own: id, tenant, timings...) with the served answer in it: cost 0,
    ``cached``, the answer's usage (what it took when it was called)."""
    answer = served.result
    update = {name: getattr(answer, name) for name in CompletionResult.model_fields if name not in _JOBS_OWN}
    return result.model_copy(update={**update, "cost_usd": 0.0, "cached": True})

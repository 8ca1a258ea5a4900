"""Rate-limit leases: a worker takes a little of a model's shared capacity ahead of use.

Exact shared limits cost one Redis round trip per request (:class:`RateLimiter.acquire`). At
high rates that round trip is most of what the resilience layers cost a job, so a process may
take, along with the request at hand, a few more RPM slots and TPM tokens in the same script call
(a *lease*) and admit its next requests from it without asking Redis.

Exactness is kept because a lease is capacity the shared buckets have already given out:

* extras are only granted from what both buckets hold *right now* and only when the request
  itself goes now (never a future slot, never while a not-before time is pending);
* a lease lives ``lease_s`` (default 100 ms, local monotonic time, counted from *before* the
  call that took it); a slot used up to ``lease_s`` after it was taken is covered by the RPM
  refill, which leaves exactly that many requests of room (``RateLimits.lease_slots``), so no
  60-second window ever holds more than ``rpm`` requests. Sub-minute slices may see up to
  ``lease_s`` worth of requests more than the burst alone would allow.
* unused RPM slots expire with the lease (giving them back later could let a short window hold
  more than the bucket allows); unused TPM tokens are given back with the next call.

A lease's size follows this process's demand: it doubles (up to ``max_extra``) when a lease runs
out before it expires and halves when more than half of one expires unused. The not-before time
still gates every leased admission (from the process's pub/sub mirror), and leases are only used
for RPM limits of at least :data:`~workers.guards.ratelimit.LEASE_MIN_RPM`, or TPM-only limits.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from workers.guards.boundedcache import bounded_put
from workers.guards.ratelimit import Grant, RateLimiter, RateLimits

__all__ = ["LeaseStats", "RateLeases"]

_NOW = Grant(0.0, True)


@dataclass(slots=True)
class _Lease:
    slots: int = 0
    tokens: int = 0
    #: Local monotonic time after which nothing left here may be used.
    expires: float = -math.inf
    #: Extra requests to ask for with the next call.
    size: int = 1
    #: What the current lease was granted (slots, or requests' worth of tokens): for sizing.
    granted: int = 0
    #: Average TPM tokens per request, to size a lease's tokens.
    avg_tokens: float = 0.0


@dataclass(slots=True)
class LeaseStats:
    """Counts for benchmarks and tests: admissions served locally vs Redis calls made."""

    local: int = 0
    calls: int = 0


class RateLeases:
    """Per-process front of :class:`RateLimiter` that serves admissions from leases. Thread-safe."""

    def __init__(
        self,
        limiter: RateLimiter,
        *,
        local_clock: Callable[[], float] = time.monotonic,
        max_extra: int = 1024,
    ) -> None:
        self.limiter = limiter
        self.local_clock = local_clock
        self.max_extra = max_extra
        self.stats = LeaseStats()
        self._lock = threading.Lock()
        self._leases: dict[str, _Lease] = {}

    def acquire(self, model_id: str, limits: RateLimits, tokens: int, max_wait_s: float, *, gate_open: bool) -> Grant:
        """Admit one request: from this process's lease when it can, else through Redis.

        ``gate_open`` is False while the model's not-before time (as this process last saw it)
        is pending: then Redis decides, since it holds the wait.
        """
        if not limits.leased:
            self.stats.calls += 1
            return self.limiter.acquire(model_id, limits, tokens, max_wait_s)
        tokens = max(int(tokens), 0)
        now = self.local_clock()
        with self._lock:
            lease = self._leases.get(model_id)
            if lease is None:
                lease = _Lease(avg_tokens=float(tokens))
                bounded_put(self._leases, model_id, lease)
            else:
                lease.avg_tokens += (tokens - lease.avg_tokens) * 0.1
            fresh = now < lease.expires
            if (
                gate_open
                and fresh
                and (not limits.rpm or lease.slots > 0)
                and (not limits.tpm or lease.tokens >= tokens)
            ):
                if limits.rpm:
                    lease.slots -= 1
                if limits.tpm:
                    lease.tokens -= tokens
                self.stats.local += 1
                return _NOW
            # this lease is spent (or cannot serve this request): size the next one, give back its tokens
            if gate_open:
                self._resize(lease, limits, fresh)
            give_back = lease.tokens
            lease.slots = lease.tokens = lease.granted = 0
            lease.expires = -math.inf
            want = lease.size
            want_tokens = math.ceil(want * lease.avg_tokens) if limits.tpm else 0
            self.stats.calls += 1
        try:
            grant = self.limiter.acquire(
                model_id,
                limits,
                tokens,
                max_wait_s,
                extra_slots=want if limits.rpm else 0,
                extra_tokens=want_tokens,
                give_back=give_back,
            )
        except BaseException:
            with self._lock:  # the give-back was not applied: keep the tokens to give back next time
                lease.tokens += give_back
            raise
        if grant.extra_slots or grant.extra_tokens:
            with self._lock:
                # another thread may have refilled meanwhile: add to it, expiring with the older part
                if lease.expires == -math.inf or now + limits.lease_s < lease.expires:
                    lease.expires = now + limits.lease_s
                lease.slots += grant.extra_slots
                lease.tokens += grant.extra_tokens
                lease.granted += (
                    grant.extra_slots if limits.rpm else int(grant.extra_tokens / max(lease.avg_tokens, 1.0))
                )
        return grant

    def _resize(self, lease: _Lease, limits: RateLimits, fresh: bool) -> None:
        if lease.granted <= 0:
            return
        if fresh:  # ran out before it expired: demand is higher than the lease
            lease.size = min(lease.size * 2, self.max_extra)
            return
        left = lease.slots if limits.rpm else int(lease.tokens / max(lease.avg_tokens, 1.0))
        if left * 2 > lease.granted:  # most of it expired unused
            lease.size = max(lease.size // 2, 1)

    def held(self, model_id: str) -> tuple[int, int, int]:
        """(RPM slots, TPM tokens, next extra size) this process holds for a model, expired or not."""
        with self._lock:
            lease = self._leases.get(model_id)
            return (lease.slots, lease.tokens, lease.size) if lease is not None else (0, 0, 1)

    def drop(self, model_id: str) -> None:
        """Forget a model's lease (its RPM slots are lost, its TPM tokens expire unused)."""
        with self._lock:
            self._leases.pop(model_id, None)

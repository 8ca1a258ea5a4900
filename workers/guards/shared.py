"""Shared guards: the Redis-backed :class:`~workers.guards.model.Guard` of every model.

One :class:`SharedGuards` per worker process holds the :class:`RateLimiter` (RPM/TPM buckets and
the not-before time after a 429), the :class:`CircuitBreaker`, the TTFT watchdog, and a mirror
of each model's breaker state and not-before time. The mirror is what keeps the happy path cheap:

* a call to a model with no RPM/TPM limit costs **no** Redis round trip (breaker closed, no
  not-before time: both read from the mirror); with limits, one (the bucket script, which also
  enforces the not-before time atomically), or none while a lease of capacity taken ahead of use
  lasts (``workers/guards/leases.py``; high RPM and TPM-only limits). A success costs none either: successes are
  counted here and reported to the breaker with this process's next failure of the model;
* the mirror is kept fresh by pub/sub: every transition and every not-before time is published
  by the script that makes it (:data:`~workers.guards.ratelimit.GUARD_CHANNEL`) and applied here by one
  listener thread, within a millisecond or so. Entries are re-read from Redis when first used,
  after every (re)subscription, and at least every ``refresh_s`` as a safety net; while the
  listener is down nothing is trusted and every check reads Redis.

Decisions that must be exclusive stay in Redis scripts: the half-open probe goes to exactly one
caller, and bucket reservations are atomic. The mirror only ever delays a caller's view of a
change by the pub/sub latency, the same race a direct read has with a request already in flight.
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, TypeVar

import redis

from workers.guards.boundedcache import bounded_put
from workers.guards.breaker import BreakerPolicy, BreakerState, CircuitBreaker, Permit
from workers.guards.leases import RateLeases
from workers.guards.model import Admission, GuardSkip
from workers.guards.policy import (
    breaker_policy_for,
    check_limits,
    counts_against_model,
    describe,
    rate_limits_for,
    skip_error,
)
from workers.guards.ratelimit import GUARD_CHANNEL, RateLimiter, RateLimits, parse_announcement
from workers.llm.errors import FirstTokenTimeoutError, LLMQError, RateLimitedError
from workers.llm.watchdog import Watchdog
from workers.routes import LLMQConfig

__all__ = ["ModelGuard", "SharedGuards"]

log = logging.getLogger("llmq.guards")
#: A job skipping a model whose half-open probe is in flight is re-queued for at most this long:
#: the probe's verdict usually comes within one call, its lease (the worst case) is much longer.
_PROBE_BUSY_WAIT_S = 5.0


@dataclass(slots=True)
class _View:
    """This process's copy of one model's shared state, in local monotonic time."""

    not_before: float = 0.0
    #: None while the breaker is closed.
    open_until: float | None = None
    #: Another caller holds the half-open probe: skip without asking Redis until then.
    busy_until: float = 0.0
    version: int = -1
    #: While open: what opened it (``describe()`` JSON).
    why: str = ""
    fetched: float = -1e18
    epoch: int = -1

    def apply_breaker(self, state: BreakerState, now: float) -> None:
        if state.version < self.version:
            return
        self.version = state.version
        self.open_until = None if state.state == "closed" else now + state.retry_in_s
        self.why = state.why
        self.busy_until = 0.0


class ModelGuard:
    """The guard of one model: what :class:`~workers.guards.model.GuardedModel` calls."""

    def __init__(self, shared: SharedGuards, model_id: str, limits: RateLimits, policy: BreakerPolicy) -> None:
        self._shared = shared
        self.model_id = model_id
        self.limits = limits
        self.policy = policy

    def admit(self, tokens: int, max_wait_s: float) -> Admission:
        shared = self._shared
        now = shared.local_clock()
        view = shared.view(self.model_id, now)
        permit: Permit | None = None
        if view.open_until is not None:
            permit = self._half_open(view, now)
        try:
            admission = self._wait(view, now, tokens, max_wait_s)
        except BaseException:
            if permit is not None:
                shared.breaker.release(self.model_id, permit)
            raise
        if permit is not None:
            if admission.refused:
                shared.breaker.release(self.model_id, permit)
            else:
                admission.probe, admission.token = True, permit
        return admission

    def _half_open(self, view: _View, now: float) -> Permit | None:
        """Skip while open; once the cooldown is over, ask Redis for the single probe."""
        assert view.open_until is not None
        if now < view.open_until:
            wait = view.open_until - now
            raise self._skip("breaker_open", f"circuit breaker open for {wait:.1f}s more", view.why, wait)
        if now < view.busy_until:
            raise self._skip(
                "breaker_probe_busy",
                "circuit breaker half-open; another call is the probe",
                view.why,
                min(view.busy_until - now, _PROBE_BUSY_WAIT_S),
            )
        shared = self._shared
        permit = shared.breaker.allow(self.model_id, self.policy)
        with shared.lock:
            if permit.version >= view.version:
                view.version = permit.version
                view.why = permit.why
                if permit.kind == "closed":
                    view.open_until = None
                elif permit.kind == "open":
                    view.open_until = now + permit.retry_in_s
                elif permit.kind == "busy":
                    view.busy_until = now + min(permit.retry_in_s, 1.0)
        if permit.kind == "open":
            wait = permit.retry_in_s
            raise self._skip("breaker_open", f"circuit breaker open for {wait:.1f}s more", permit.why, wait)
        if permit.kind == "busy":
            raise self._skip(
                "breaker_probe_busy",
                "circuit breaker half-open; another call is the probe",
                permit.why,
                min(permit.retry_in_s, _PROBE_BUSY_WAIT_S),
            )
        return permit if permit.kind == "probe" else None

    def _skip(self, kind: str, reason: str, why: str, wait_s: float) -> GuardSkip:
        """Pass the model over while its breaker is open. When what opened it passes with time (5xx,
        overload, timeouts, cut streams), the skip carries the wait until a call may go through
        again, so a job with no other model is re-queued for it rather than failed; when it does not
        (model not found, no quota, a refused key), the job fails at once with that error."""
        error = skip_error(self.model_id, why) if why else None
        transient = error is None or error.is_retryable or isinstance(error, FirstTokenTimeoutError)
        return GuardSkip(kind, reason, error, retry_after=wait_s if transient else None)

    def _wait(self, view: _View, now: float, tokens: int, max_wait_s: float) -> Admission:
        limits = self.limits
        if limits.active:
            gate_open = view.not_before <= now
            grant = self._shared.leases.acquire(self.model_id, limits, tokens, max_wait_s, gate_open=gate_open)
            if grant.too_large:
                raise GuardSkip(
                    "too_large", f"needs {tokens} tokens, more than the {limits.tpm}-token TPM bucket holds"
                )
            if grant.wait_s <= 0 and grant.admitted:
                return Admission()
            return Admission(grant.wait_s, grant.reason, not grant.admitted)
        wait = view.not_before - now
        if wait <= 0:
            return Admission()
        # without a bucket to space them out, spread the waiters so they do not all fire at once
        wait += self._shared.jitter(wait)
        return Admission(wait, "not_before", wait > max_wait_s)

    def settle(self, admission: Admission, error: LLMQError | None, *, verdict: bool = True) -> str | None:
        shared = self._shared
        permit = admission.token if isinstance(admission.token, Permit) else None
        if error is not None and isinstance(error, RateLimitedError):
            shared.hold_off(self.model_id, error.retry_after)
        if not verdict or (error is not None and not counts_against_model(error)):
            if permit is not None:
                shared.breaker.release(self.model_id, permit)
            return None
        if error is None and permit is None:
            shared.count_success(self.model_id)  # reported with the next failure: no Redis call now
            return None
        state = shared.breaker.record(
            self.model_id,
            self.policy,
            failed=error is not None,
            probe=permit is not None,
            successes=shared.take_successes(self.model_id, self.policy.window_s),
            why=describe(error) if error is not None else "",
        )
        shared.observe(self.model_id, state)
        return state.state if state.changed else None


class SharedGuards:
    """Per-process entry point: ``for_model(model_id)`` gives that model's :class:`ModelGuard`.

    ``clock`` replaces Redis ``TIME`` inside the scripts (tests only); ``local_clock`` is the
    process's monotonic clock that mirrored deadlines are kept in.
    """

    def __init__(
        self,
        client: redis.Redis,
        config: LLMQConfig,
        *,
        clock: Callable[[], float] | None = None,
        local_clock: Callable[[], float] = time.monotonic,
        refresh_s: float = 5.0,
        max_retry_after_s: float = 120.0,
        watchdog: Watchdog | None = None,
        rng: random.Random | None = None,
        channel: str = GUARD_CHANNEL,
    ) -> None:
        check_limits(config)
        self._client = client
        self.config = config
        self.limiter = RateLimiter(client, clock=clock, channel=channel)
        self.breaker = CircuitBreaker(client, clock=clock, channel=channel)
        self.leases = RateLeases(self.limiter, local_clock=local_clock)
        self.watchdog = watchdog or Watchdog()
        self.local_clock = local_clock
        self.refresh_s = refresh_s
        self.max_retry_after_s = max_retry_after_s
        self.channel = channel
        self.lock = threading.Lock()
        self._rng = rng or random.Random()
        self._views: dict[str, _View] = {}
        self._guards: dict[str, ModelGuard] = {}
        #: model -> [successes not yet reported to its breaker, local time the count started]
        self._successes: dict[str, list[float]] = {}
        self._epoch = 0
        self._live = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- per model ------------------------------------------------------------------------------

    def for_model(self, model_id: str) -> ModelGuard:
        guard = self._guards.get(model_id)
        if guard is None:
            mc = self.config.model(model_id)
            guard = ModelGuard(self, model_id, rate_limits_for(mc, model_id), breaker_policy_for(mc))
            with self.lock:
                bounded_put(self._guards, model_id, guard)
        return guard

    def view(self, model_id: str, now: float) -> _View:
        view = self._views.get(model_id)
        if view is not None and self._live and view.epoch == self._epoch and now - view.fetched < self.refresh_s:
            return view
        return self._fetch(model_id, now)

    def _fetch(self, model_id: str, now: float) -> _View:
        # Register the entry first: announcements arriving while we read are applied to it, and
        # merging below (versions, max) keeps whichever is newer.
        with self.lock:
            epoch = self._epoch
            view = self._views.get(model_id)
            if view is None:
                view = _View()
                bounded_put(self._views, model_id, view)
        state = self.breaker.state(model_id)
        wait = self.limiter.not_before(model_id)
        with self.lock:
            view.apply_breaker(state, now)
            view.not_before = max(view.not_before, now + wait) if wait > 0 else view.not_before
            view.fetched, view.epoch = now, epoch
        return view

    def held_for(self, model_id: str) -> float | None:
        """Seconds left of the model's shared not-before time (a 429's wait), or None.

        Read from the mirror (no Redis round trip while it is live), so the fallback chain can
        pass over a held model before reserving anything for it.
        """
        now = self.local_clock()
        wait = self.view(model_id, now).not_before - now
        return wait if wait > 0 else None

    def breakers_open(self) -> dict[str, bool]:
        """Model -> breaker not closed (open or half-open), as this process last saw it; the
        announcements keep it fresh (``llm_breaker_open`` reads it at each scrape)."""
        with self.lock:
            return {model: view.open_until is not None for model, view in self._views.items()}

    def observe(self, model_id: str, state: BreakerState) -> None:
        with self.lock:
            view = self._views.get(model_id)
            if view is not None:
                view.apply_breaker(state, self.local_clock())

    def hold_off(self, model_id: str, retry_after: float | None) -> None:
        """A 429: make every worker wait what it asked for (when it is positive and sane)."""
        if retry_after is None or not 0 < retry_after <= self.max_retry_after_s:
            return
        wait = self.limiter.hold_off(model_id, retry_after)
        with self.lock:
            view = self._views.get(model_id)
            if view is not None:
                view.not_before = max(view.not_before, self.local_clock() + wait)

    def count_success(self, model_id: str) -> None:
        with self.lock:
            entry = self._successes.get(model_id)
            if entry is None:
                bounded_put(self._successes, model_id, [1.0, self.local_clock()])
            else:
                entry[0] += 1

    def take_successes(self, model_id: str, window_s: float) -> int:
        """Successes counted since the last report, scaled down to one window if older."""
        with self.lock:
            entry = self._successes.pop(model_id, None)
        if entry is None:
            return 0
        count, since = entry
        age = self.local_clock() - since
        return int(count if age <= window_s else count * window_s / age)

    def jitter(self, wait: float) -> float:
        return self._rng.uniform(0, min(1.0, wait * 0.1))

    # --- the listener ---------------------------------------------------------------------------

    @property
    def live(self) -> bool:
        """True while the mirror is subscribed to announcements (and so is trusted)."""
        return self._live

    def start(self) -> None:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="llmq-guards", daemon=True)
            self._thread.start()

    def wait_live(self, timeout: float = 5.0) -> bool:
        deadline = time.monotonic() + timeout
        while not self._live and time.monotonic() < deadline:
            time.sleep(0.01)
        return self._live

    def _run(self) -> None:
        while not self._stop.is_set():
            pubsub = self._client.pubsub()
            try:
                pubsub.subscribe(self.channel)
                while not self._stop.is_set():
                    message = pubsub.get_message(timeout=0.25)  # also how soon stop() is seen
                    if message is None:
                        continue
                    if message.get("type") == "subscribe":
                        with self.lock:  # everything read before now may have missed announcements
                            self._epoch += 1
                            self._live = True
                    elif message.get("type") == "message":
                        self._apply(message["data"])
            except redis.RedisError as exc:
                log.warning("guard mirror lost Redis (%s); reading state directly until it is back", exc)
                self._stop.wait(1.0)
            finally:
                self._live = False
                with contextlib.suppress(redis.RedisError):
                    pubsub.close()

    def _apply(self, raw: bytes | str) -> None:
        msg = parse_announcement(raw)
        if msg is None:
            return
        now = self.local_clock()
        with self.lock:
            view = self._views.get(str(msg["m"]))
            if view is None:
                return  # not used in this process yet: read from Redis on first use
            seconds = _number(msg.get("ms"), float) / 1000.0
            if msg.get("k") == "nb":
                view.not_before = max(view.not_before, now + seconds)
            elif msg.get("k") == "cb":
                version = _number(msg.get("v"), int)
                state: Literal["closed", "open"] = "closed" if msg.get("st") == "closed" else "open"
                view.apply_breaker(BreakerState(state, seconds, version, why=str(msg.get("why") or "")), now)

    def stop(self) -> None:
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(3)
        self.watchdog.stop()


_N = TypeVar("_N", int, float)


def _number(value: object, kind: type[_N]) -> _N:
    """A number field of an announcement (absent: 0)."""
    return kind(value) if isinstance(value, int | float | str) and value else kind(0)

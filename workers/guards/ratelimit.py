"""Request and token rate limits per model, shared by every worker, and the "not before" time.

State lives in Redis and each operation is one Lua script (GCRA token buckets for RPM and TPM, timed
by Redis' own clock), so N workers together admit what one would. :meth:`RateLimiter.acquire`
reserves the earliest slot both buckets admit, up to ``max_wait_s`` ahead, and returns the wait; a
429's wait is stored per model (``llmq:nb:{model}``) and published on :data:`GUARD_CHANNEL`.

The bucket shapes, leases, reservations and why each choice: ``docs/rate-limits.md``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass

import redis

__all__ = [
    "GUARD_CHANNEL",
    "LEASE_MIN_RPM",
    "LUA_NOW",
    "Grant",
    "RateLimiter",
    "RateLimits",
    "not_before_key",
    "parse_announcement",
    "rate_keys",
]

#: Pub/sub channel on which not-before times and breaker transitions are announced.
GUARD_CHANNEL = "llmq:guards"

#: Lua preamble shared by the guard scripts: `now` in ms from ARGV[1], or from Redis TIME when empty.
LUA_NOW = """
local now = tonumber(ARGV[1])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
end
"""

# KEYS: rpm tat, tpm tat, not-before
# ARGV: now_ms|'', rpm interval ms (0 = no limit), rpm burst, ms per token (0 = none), tpm burst,
#       tokens, max wait ms, extra slots wanted, extra tokens wanted, tokens given back
# Returns {code, extra slots, extra tokens}. code: 4 * (microseconds to wait) + why (0 none,
# 1 not-before, 2 rpm, 3 tpm) when the slot is reserved; -1 when tokens > tpm burst (never fits);
# when refused (nothing reserved), -2 - (4 * microseconds + why). Extras (a lease, see
# RateLimiter.acquire) are only granted from what both buckets hold right now, and only when the
# request itself goes now; given-back tokens are credited first.
_ACQUIRE = (
    LUA_NOW
    + """
local ri, rb = tonumber(ARGV[2]), tonumber(ARGV[3])
local ti, tb, cost = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local xs, xt, back = tonumber(ARGV[8]) or 0, tonumber(ARGV[9]) or 0, tonumber(ARGV[10]) or 0
if ti > 0 and cost > tb then return {-1, 0, 0} end
local at, why = now, 0
local nb = tonumber(redis.call('GET', KEYS[3]))
if nb and nb > at then at, why = nb, 1 end
local rtat, ttat
if ri > 0 then
  rtat = math.max(tonumber(redis.call('GET', KEYS[1])) or now, now)
  local t = rtat + (1 - rb) * ri
  if t > at then at, why = t, 2 end
end
if ti > 0 then
  ttat = math.max(tonumber(redis.call('GET', KEYS[2])) or now, now)
  if back > 0 then ttat = math.max(ttat - back * ti, now) end
  local t = ttat + (cost - tb) * ti
  if t > at then at, why = t, 3 end
end
local wait = at - now
if wait < 0.05 then wait = 0 end  -- under 50 us: float noise at ms-since-epoch scale, or far below jitter
local code = 4 * math.ceil(wait * 1000) + why
if wait > tonumber(ARGV[7]) then
  if back > 0 and ti > 0 then
    redis.call('SET', KEYS[2], string.format('%.17g', ttat), 'PX', math.ceil(ttat - now) + 1)
  end
  return {-2 - code, 0, 0}
end
local rnew, tnew, gs, gt = 0, 0, 0, 0
if ri > 0 then rnew = math.max(rtat, at) + ri end
if ti > 0 then tnew = math.max(ttat, at) + cost * ti end
if wait == 0 then
  if ri > 0 and xs > 0 then
    gs = math.max(0, math.min(xs, math.floor(rb + (now - rnew) / ri)))
    rnew = rnew + gs * ri
  end
  if ti > 0 and xt > 0 and (ri == 0 or gs > 0) then
    gt = math.max(0, math.min(xt, math.floor(tb + (now - tnew) / ti)))
    if ri > 0 and gs < xs then gt = math.min(gt, math.floor(xt * gs / xs)) end
    tnew = tnew + gt * ti
  end
end
if ri > 0 then
  redis.call('SET', KEYS[1], string.format('%.17g', rnew), 'PX', math.ceil(rnew - now) + 1)
end
if ti > 0 then
  redis.call('SET', KEYS[2], string.format('%.17g', tnew), 'PX', math.ceil(tnew - now) + 1)
end
return {code, gs, gt}
"""
)

# KEYS: not-before; ARGV: now_ms|'', wait ms, channel, model. Only ever moves the time later.
# Returns the remaining wait in ms.
_HOLD_OFF = (
    LUA_NOW
    + """
local want = now + tonumber(ARGV[2])
local cur = tonumber(redis.call('GET', KEYS[1]))
if cur and cur >= want then return math.ceil(cur - now) end
local ms = math.ceil(want - now)
redis.call('SET', KEYS[1], string.format('%.3f', want), 'PX', ms)
redis.call('PUBLISH', ARGV[3], cjson.encode({k = 'nb', m = ARGV[4], ms = ms}))
return ms
"""
)

# KEYS: not-before; ARGV: now_ms|''. Returns the remaining wait in ms (0 = none).
_NOT_BEFORE = (
    LUA_NOW
    + """
local cur = tonumber(redis.call('GET', KEYS[1]))
if not cur or cur <= now then return 0 end
return math.ceil(cur - now)
"""
)


def rate_keys(model_id: str) -> tuple[str, str]:
    return f"llmq:rl:{{{model_id}}}:rpm", f"llmq:rl:{{{model_id}}}:tpm"


def not_before_key(model_id: str) -> str:
    return f"llmq:nb:{{{model_id}}}"


#: Leases are used for RPM limits of at least this many requests per second (below, a round
#: trip per request costs nothing worth saving, and a lease's share of the limit would be large).
LEASE_MIN_RPM = 1200


@dataclass(frozen=True, slots=True)
class RateLimits:
    """A model's limits; ``None`` = unlimited. Bursts default as docs/rate-limits.md explains.

    ``lease_s`` is how long a worker may hold capacity it took ahead of use (see
    ``workers/guards/leases.py``); 0 turns leases off. It is part of the bucket's shape: the RPM
    refill leaves room for requests sent up to ``lease_s`` after their slot was taken.
    """

    rpm: int | None = None
    tpm: int | None = None
    rpm_burst: int | None = None
    tpm_burst: int | None = None
    lease_s: float = 0.0

    def __post_init__(self) -> None:
        for name in ("rpm", "tpm", "rpm_burst", "tpm_burst"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be > 0")
        if self.rpm and self.rpm_burst and self.rpm_burst > self.rpm:
            raise ValueError("rpm_burst must be <= rpm")
        if not 0 <= self.lease_s <= 1.0:
            raise ValueError("lease_s must be between 0 and 1 second")
        if self.rpm and self._per_minute() < 1:
            raise ValueError("rpm_burst leaves no refill: lower it")

    @property
    def active(self) -> bool:
        return bool(self.rpm or self.tpm)

    @property
    def leased(self) -> bool:
        """Whether workers may take this model's capacity ahead of use (a lease)."""
        if self.lease_s <= 0 or not self.active:
            return False
        return self.rpm is None or self.rpm >= LEASE_MIN_RPM

    def lease_slots(self) -> int:
        """RPM slots a lease may delay by up to ``lease_s``: what the refill leaves room for."""
        return math.ceil(self.rpm * self.lease_s / 60.0) if self.rpm and self.leased else 0

    def script_args(self) -> tuple[float, int, float, int]:
        """(ms between requests, rpm burst, ms per token, tpm burst); 0 interval = no limit."""
        rpm_interval = 60_000.0 / self._per_minute() if self.rpm else 0.0
        tpm_interval = 60_000.0 / self.tpm if self.tpm else 0.0
        tpm_burst = self.tpm_burst or self.tpm or 0
        return rpm_interval, self._rpm_burst(), tpm_interval, tpm_burst

    def _rpm_burst(self) -> int:
        return self.rpm_burst or max(1, (self.rpm or 0) // 600)

    def _per_minute(self) -> int:
        # refill so that burst + one minute of refill never exceeds rpm (see the module
        # docstring), counting the requests a lease may send up to lease_s after their slot
        return (self.rpm or 0) - self._rpm_burst() + 1 - self.lease_slots()


_REASONS = ("", "not_before", "rpm", "tpm")


@dataclass(frozen=True, slots=True)
class Grant:
    """What :meth:`RateLimiter.acquire` decided."""

    #: Seconds to wait before sending (0 = now). When not admitted: the wait that was needed.
    wait_s: float
    admitted: bool
    #: What sets the wait: ``not_before``, ``rpm``, ``tpm`` ("" when there is none).
    reason: str = ""
    #: The request needs more tokens than the TPM bucket holds: it can never be sent here.
    too_large: bool = False
    #: Capacity taken beyond this request (a lease): further requests and TPM tokens.
    extra_slots: int = 0
    extra_tokens: int = 0


_NOW_GRANT = Grant(0.0, True)


class RateLimiter:
    """RPM/TPM buckets and not-before times in Redis. Thread-safe; one per process is enough.

    ``clock`` (seconds, any epoch) replaces Redis ``TIME`` in every script: for tests only, since
    workers must share one clock.
    """

    def __init__(
        self, client: redis.Redis, *, clock: Callable[[], float] | None = None, channel: str = GUARD_CHANNEL
    ) -> None:
        self._client = client
        self._clock = clock
        self.channel = channel
        self._acquire = client.register_script(_ACQUIRE)
        self._hold_off = client.register_script(_HOLD_OFF)
        self._not_before = client.register_script(_NOT_BEFORE)
        self._statics: dict[str, tuple[RateLimits, tuple[bytes, ...]]] = {}

    def _now(self) -> str:
        return "" if self._clock is None else repr(self._clock() * 1000.0)

    def _static(self, model_id: str, limits: RateLimits) -> tuple[bytes, ...]:
        """The keys and limit arguments of a model's acquire call, encoded once (hot path)."""
        cached = self._statics.get(model_id)
        if cached is not None and cached[0] is limits:
            return cached[1]
        rpm_i, rpm_b, tpm_i, tpm_b = limits.script_args()
        static = tuple(
            str(x).encode() for x in (*rate_keys(model_id), not_before_key(model_id), rpm_i, rpm_b, tpm_i, tpm_b)
        )
        if len(self._statics) >= 4096:
            self._statics.clear()
        self._statics[model_id] = (limits, static)
        return static

    def acquire(
        self,
        model_id: str,
        limits: RateLimits,
        tokens: int,
        max_wait_s: float,
        *,
        extra_slots: int = 0,
        extra_tokens: int = 0,
        give_back: int = 0,
    ) -> Grant:
        """Reserve one request of ``tokens`` tokens, sending no earlier than the not-before time.

        When the request can go now, also take up to ``extra_slots`` further requests and
        ``extra_tokens`` TPM tokens, as far as the buckets hold them right now (never a future
        slot); the grant says how many were taken. ``give_back`` returns TPM tokens taken
        earlier and not used. Leases are built on this: ``workers/guards/leases.py``.
        """
        rpm_key, tpm_key, nb_key, rpm_i, rpm_b, tpm_i, tpm_b = self._static(model_id, limits)
        wait_ms = max(max_wait_s, 0.0) * 1000.0
        args = (
            self._now(),
            rpm_i,
            rpm_b,
            tpm_i,
            tpm_b,
            max(int(tokens), 0),
            wait_ms,
            max(extra_slots, 0),
            max(extra_tokens, 0),
            max(give_back, 0),
        )
        code, slots, more = (int(x) for x in self._acquire(keys=(rpm_key, tpm_key, nb_key), args=args))
        if code == 0:
            return Grant(0.0, True, extra_slots=slots, extra_tokens=more) if slots or more else _NOW_GRANT
        if code == -1:
            return Grant(math.inf, False, "tpm", too_large=True)
        admitted = code > 0
        if not admitted:
            code = -code - 2
        micros, why = divmod(code, 4)
        return Grant(micros / 1e6, admitted, _REASONS[why], extra_slots=slots, extra_tokens=more)

    def hold_off(self, model_id: str, seconds: float) -> float:
        """Make every worker wait ``seconds`` before the next request to the model (a 429's wait).

        Never shortens an existing wait. Returns the wait now in force, in seconds.
        """
        ms = max(1, math.ceil(seconds * 1000))
        keys = (not_before_key(model_id),)
        return int(self._hold_off(keys=keys, args=(self._now(), ms, self.channel, model_id))) / 1000.0

    def available(self, model_id: str, limits: RateLimits) -> tuple[int | None, int | None]:
        """(requests, tokens) the buckets would admit right now; None where there is no limit.

        A read for operators (``llmq limits``): it reserves nothing, and the answer is stale as
        soon as another worker admits a request.
        """
        rpm_i, rpm_b, tpm_i, tpm_b = limits.script_args()
        pipe = self._client.pipeline(transaction=False)
        pipe.time()
        for key in rate_keys(model_id):
            pipe.get(key)
        (sec, usec), rpm_tat, tpm_tat = pipe.execute()
        now = self._clock() * 1000.0 if self._clock is not None else sec * 1000.0 + usec / 1000.0

        def level(raw: bytes | None, interval: float, burst: int) -> int | None:
            if interval <= 0:
                return None
            tat = max(float(raw) if raw else now, now)
            return max(0, min(burst, math.floor(burst + (now - tat) / interval)))

        return level(rpm_tat, rpm_i, rpm_b), level(tpm_tat, tpm_i, tpm_b)

    def not_before(self, model_id: str) -> float:
        """Seconds until requests to the model may be sent again (0 = now)."""
        return int(self._not_before(keys=(not_before_key(model_id),), args=(self._now(),))) / 1000.0


def parse_announcement(raw: bytes | str) -> dict[str, object] | None:
    """Decode a :data:`GUARD_CHANNEL` message (``{"k": "nb" | "cb", ...}``); None if malformed."""
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    return value if isinstance(value, dict) and isinstance(value.get("m"), str) else None

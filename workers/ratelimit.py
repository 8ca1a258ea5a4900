"""Request and token rate limits per model, shared by every worker, and the "not before" time.

State lives in Redis and each operation is one Lua script, so N workers together admit what one
would: no read-modify-write races, no per-process limits multiplied by the worker count.

**Buckets.** Each limit is a token bucket written as GCRA (one number per bucket: the theoretical
arrival time ``tat``) with capacity ``burst``; in any ``t`` seconds it admits at most
``burst + rate * t``.

* RPM: ``burst`` defaults to 100 ms worth of requests (``rpm // 600``, at least 1) and the bucket
  refills at ``(rpm - burst + 1) / 60`` per second, so **no 60-second window ever holds more than
  ``rpm`` requests** (GCRA admits at most ``burst - 1 + ceil(T / interval)`` in a window of ``T``).
  Below 1200 RPM that is a burst of 1 and requests spaced exactly ``60 / rpm`` s apart; above, the
  burst spares concurrent jobs sub-millisecond waits at a long-run cost of at most 0.17% of the
  limit. Providers also enforce RPM over sub-minute slices, which this shape respects.
* TPM: ``burst`` defaults to ``tpm`` (one request may carry many tokens, so the bucket holds a
  minute's worth, as the provider's own bucket does), refilled at ``tpm / 60`` per second: the
  long-run rate is exact, a cold start may use one extra minute's worth. A request needing more
  tokens than ``burst`` can never be admitted: :meth:`RateLimiter.acquire` says so
  (``too_large``) and the guard skips the model instead of waiting forever.

A request's TPM cost is its pre-counted prompt tokens plus ``max_tokens``, charged up front and
not refunded (OpenAI counts ``max_tokens`` the same way).

**Reservations.** :meth:`acquire` does not make callers poll: when the buckets are short it
reserves the earliest slot at which both would admit the request, up to ``max_wait_s`` ahead, and
returns the wait. The caller sleeps that long and sends; waiters are thus spaced out instead of
stampeding. A wait beyond ``max_wait_s`` reserves nothing (the job is re-queued instead). Waits
under 50 µs are returned as 0: far below network jitter, and they absorb float rounding.

**Not before.** A 429's wait is stored per model (``llmq:nb:{model}``) and published on
:data:`GUARD_CHANNEL`; :meth:`acquire` never admits a request before it, and guards of models
without RPM/TPM limits read it from their process's mirror (``workers/guards.py``).

**One clock.** Admission times from different workers are compared with each other, so the
scripts read the time from Redis (``TIME``) instead of trusting each host's clock; callers receive
durations, never timestamps. Tests inject ``clock`` (seconds) and the scripts use it instead.
(Redis >= 5 replicates script effects, which is what allows ``TIME`` before writes.)

Keys carry the model id as a hash tag (``llmq:rl:{openai:gpt-4o}:rpm``): one model's keys share a
cluster slot. Every key expires once its state is equivalent to "idle".
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass

import redis

__all__ = [
    "GUARD_CHANNEL",
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
#       tokens, max wait ms
# Returns 4 * (microseconds to wait) + why (0 none, 1 not-before, 2 rpm, 3 tpm) when the slot is
# reserved; -1 when tokens > tpm burst (never fits); when refused (nothing reserved),
# -2 - (4 * microseconds + why).
_ACQUIRE = (
    LUA_NOW
    + """
local ri, rb = tonumber(ARGV[2]), tonumber(ARGV[3])
local ti, tb, cost = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
if ti > 0 and cost > tb then return -1 end
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
  local t = ttat + (cost - tb) * ti
  if t > at then at, why = t, 3 end
end
local wait = at - now
if wait < 0.05 then wait = 0 end  -- under 50 us: float noise at ms-since-epoch scale, or far below jitter
local code = 4 * math.ceil(wait * 1000) + why
if wait > tonumber(ARGV[7]) then return -2 - code end
if ri > 0 then
  local tat = math.max(rtat, at) + ri
  redis.call('SET', KEYS[1], string.format('%.17g', tat), 'PX', math.ceil(tat - now) + 1)
end
if ti > 0 then
  local tat = math.max(ttat, at) + cost * ti
  redis.call('SET', KEYS[2], string.format('%.17g', tat), 'PX', math.ceil(tat - now) + 1)
end
return code
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


@dataclass(frozen=True, slots=True)
class RateLimits:
    """A model's limits; ``None`` = unlimited. Bursts default as the module docstring explains."""

    rpm: int | None = None
    tpm: int | None = None
    rpm_burst: int | None = None
    tpm_burst: int | None = None

    def __post_init__(self) -> None:
        for name in ("rpm", "tpm", "rpm_burst", "tpm_burst"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be > 0")
        if self.rpm and self.rpm_burst and self.rpm_burst > self.rpm:
            raise ValueError("rpm_burst must be <= rpm")

    @property
    def active(self) -> bool:
        return bool(self.rpm or self.tpm)

    def script_args(self) -> tuple[float, int, float, int]:
        """(ms between requests, rpm burst, ms per token, tpm burst); 0 interval = no limit."""
        rpm_burst = self.rpm_burst or max(1, (self.rpm or 0) // 600)
        # refill so that burst + one minute of refill never exceeds rpm (see the module docstring)
        rpm_interval = 60_000.0 / (self.rpm - rpm_burst + 1) if self.rpm else 0.0
        tpm_interval = 60_000.0 / self.tpm if self.tpm else 0.0
        tpm_burst = self.tpm_burst or self.tpm or 0
        return rpm_interval, rpm_burst, tpm_interval, tpm_burst


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

    def acquire(self, model_id: str, limits: RateLimits, tokens: int, max_wait_s: float) -> Grant:
        """Reserve one request of ``tokens`` tokens, sending no earlier than the not-before time."""
        rpm_key, tpm_key, nb_key, rpm_i, rpm_b, tpm_i, tpm_b = self._static(model_id, limits)
        wait_ms = max(max_wait_s, 0.0) * 1000.0
        args = (self._now(), rpm_i, rpm_b, tpm_i, tpm_b, max(int(tokens), 0), wait_ms)
        code = int(self._acquire(keys=(rpm_key, tpm_key, nb_key), args=args))
        if code == 0:
            return _NOW_GRANT
        if code == -1:
            return Grant(math.inf, False, "tpm", too_large=True)
        admitted = code > 0
        if not admitted:
            code = -code - 2
        micros, why = divmod(code, 4)
        return Grant(micros / 1e6, admitted, _REASONS[why])

    def hold_off(self, model_id: str, seconds: float) -> float:
        """Make every worker wait ``seconds`` before the next request to the model (a 429's wait).

        Never shortens an existing wait. Returns the wait now in force, in seconds.
        """
        ms = max(1, math.ceil(seconds * 1000))
        keys = (not_before_key(model_id),)
        return int(self._hold_off(keys=keys, args=(self._now(), ms, self.channel, model_id))) / 1000.0

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

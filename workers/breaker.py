"""A circuit breaker per ``provider:model``, shared by every worker through Redis.

States, as every worker sees them::

    closed --(failures in the window reach the threshold, or the failure ratio does)--> open
    open --(cooldown elapsed)--> half-open: exactly one caller gets the probe, others skip
    half-open --probe succeeds--> closed      half-open --probe fails--> open (new cooldown)

While open, the guard raises ``SkipModel`` so the fallback chain goes straight to the next model
without a request. What counts as a failure is the caller's decision (the guard counts errors
that say the model is unhealthy: 5xx, overload, timeouts, broken streams, first-token timeouts,
model not found, no quota; not 429s, which set the not-before time instead, and not errors caused
by the request itself).

The window is sliding, kept as ten slots of ``window_s / 10`` in one hash, so counting costs a
fixed number of fields. In count mode (the default) only failures are recorded, so a success costs
no Redis call at all; with ``failure_ratio`` set, every outcome is recorded and the breaker also
opens when at least ``min_calls`` calls in the window failed at that ratio.

Each operation is one Lua script on ``llmq:cb:{model}``; transitions bump a version and are
published on :data:`~workers.ratelimit.GUARD_CHANNEL` so each process can mirror the state and
skip the Redis call while the breaker is closed (``workers/guards.py``). Time comes from Redis
``TIME`` (one clock for all workers) unless a test injects ``clock``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import redis

from workers.ratelimit import GUARD_CHANNEL, LUA_NOW

__all__ = ["BreakerPolicy", "BreakerState", "CircuitBreaker", "Permit", "breaker_key"]

_SLOTS = 10

# KEYS: state hash; ARGV: now|'', probe lease ms, ttl ms.
# Returns {code, ms, version}: 0 closed (go), 1 open (skip, ms until half-open),
# 2 half-open with a probe in flight (skip, ms until that probe's lease ends), 3 you are the probe
# (ms = your lease end, to release it).
_ALLOW = (
    LUA_NOW
    + """
local f = redis.call('HMGET', KEYS[1], 'st', 'until', 'probe', 'v')
local v = tonumber(f[4]) or 0
if f[1] ~= '1' then return {0, 0, v} end
local untl = tonumber(f[2]) or 0
if untl > now then return {1, math.ceil(untl - now), v} end
local probe = tonumber(f[3]) or 0
if probe > now then return {2, math.ceil(probe - now), v} end
local lease = math.floor(now + tonumber(ARGV[2]))
redis.call('HSET', KEYS[1], 'probe', lease)
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return {3, lease, v}
"""
)

# KEYS: state hash; ARGV: now|'', failed 0/1, probe 0/1, threshold, window ms, cooldown ms,
# ratio (0 = off), min calls, channel, model, ttl ms.
# Returns {state 0 closed / 1 open, ms until half-open, version, changed 0/1}.
_RECORD = (
    LUA_NOW
    + """
local key = KEYS[1]
local failed, probe = ARGV[2] == '1', ARGV[3] == '1'
local f = redis.call('HMGET', key, 'st', 'until', 'v')
local v = tonumber(f[3]) or 0
local function move(open)
  v = v + 1
  for i = 0, 9 do redis.call('HDEL', key, 'e' .. i, 'f' .. i, 'c' .. i) end
  local ms = 0
  if open then
    ms = tonumber(ARGV[6])
    redis.call('HSET', key, 'st', 1, 'until', math.floor(now + ms), 'probe', 0, 'v', v)
  else
    redis.call('HSET', key, 'st', 0, 'until', 0, 'probe', 0, 'v', v)
  end
  redis.call('PEXPIRE', key, ARGV[11])
  redis.call('PUBLISH', ARGV[9], cjson.encode({k = 'cb', m = ARGV[10], st = open and 'open' or 'closed', ms = ms, v = v}))
  return {open and 1 or 0, ms, v, 1}
end
if f[1] == '1' then
  if probe then return move(failed) end
  -- a late result of a call started before the breaker opened: not counted
  return {1, math.max(0, math.ceil((tonumber(f[2]) or 0) - now)), v, 0}
end
local slot_ms = tonumber(ARGV[5]) / 10
local slot = math.floor(now / slot_ms)
local i = slot % 10
if tonumber(redis.call('HGET', key, 'e' .. i)) ~= slot then
  redis.call('HSET', key, 'e' .. i, slot, 'f' .. i, 0, 'c' .. i, 0)
end
redis.call('HINCRBY', key, 'c' .. i, 1)
if failed then redis.call('HINCRBY', key, 'f' .. i, 1) end
redis.call('PEXPIRE', key, ARGV[11])
if not failed then return {0, 0, v, 0} end
local fails, calls = 0, 0
for j = 0, 9 do
  local e = tonumber(redis.call('HGET', key, 'e' .. j))
  if e and e > slot - 10 then
    fails = fails + (tonumber(redis.call('HGET', key, 'f' .. j)) or 0)
    calls = calls + (tonumber(redis.call('HGET', key, 'c' .. j)) or 0)
  end
end
local ratio = tonumber(ARGV[7])
if fails >= tonumber(ARGV[4]) or (ratio > 0 and calls >= tonumber(ARGV[8]) and fails / calls >= ratio) then
  return move(true)
end
return {0, 0, v, 0}
"""
)

# KEYS: state hash; ARGV: lease. Gives the probe back (the call ended without telling anything).
_RELEASE = """
if tonumber(redis.call('HGET', KEYS[1], 'probe')) == tonumber(ARGV[1]) then
  redis.call('HSET', KEYS[1], 'probe', 0)
end
return 0
"""

# KEYS: state hash; ARGV: now|''. Returns {0 closed / 1 open, ms until half-open, version}.
_STATE = (
    LUA_NOW
    + """
local f = redis.call('HMGET', KEYS[1], 'st', 'until', 'v')
local v = tonumber(f[3]) or 0
if f[1] ~= '1' then return {0, 0, v} end
return {1, math.max(0, math.ceil((tonumber(f[2]) or 0) - now)), v}
"""
)


def breaker_key(model_id: str) -> str:
    return f"llmq:cb:{{{model_id}}}"


@dataclass(frozen=True, slots=True)
class BreakerPolicy:
    #: Open after this many failures within ``window_s``...
    failures: int = 5
    window_s: float = 60.0
    #: ...and stay open this long before letting one probe through.
    cooldown_s: float = 30.0
    #: Also open when this share of the window's calls failed (None = count only).
    failure_ratio: float | None = None
    #: Calls needed in the window before ``failure_ratio`` is judged.
    min_calls: int = 20
    #: A probe that never reports back (its worker died) is replaced after this long.
    probe_timeout_s: float = 120.0

    def __post_init__(self) -> None:
        if self.failures < 1 or self.window_s <= 0 or self.cooldown_s <= 0 or self.probe_timeout_s <= 0:
            raise ValueError("breaker failures, window, cooldown and probe timeout must be > 0")
        if self.failure_ratio is not None and not 0 < self.failure_ratio <= 1:
            raise ValueError("failure_ratio must be in (0, 1]")

    @property
    def counts_successes(self) -> bool:
        return self.failure_ratio is not None

    def ttl_ms(self) -> int:
        return int((max(self.window_s, self.cooldown_s) + self.probe_timeout_s + 60) * 1000)


@dataclass(frozen=True, slots=True)
class Permit:
    """The answer of :meth:`CircuitBreaker.allow`."""

    kind: Literal["closed", "open", "busy", "probe"]
    #: ``open``: seconds until half-open; ``busy``: seconds until the probe's lease ends.
    retry_in_s: float
    version: int
    #: ``probe``: the lease to hand back with :meth:`CircuitBreaker.release`.
    lease: int = 0

    @property
    def go(self) -> bool:
        return self.kind in ("closed", "probe")


@dataclass(frozen=True, slots=True)
class BreakerState:
    state: Literal["closed", "open", "half_open"]
    #: Seconds until an open breaker turns half-open (0 otherwise).
    retry_in_s: float
    version: int
    #: True when this call moved the breaker (opened or closed it).
    changed: bool = False


_KINDS: tuple[Literal["closed", "open", "busy", "probe"], ...] = ("closed", "open", "busy", "probe")


def _state(code: int, ms: int, version: int, changed: bool = False) -> BreakerState:
    if code == 0:
        return BreakerState("closed", 0.0, version, changed)
    return BreakerState("open" if ms > 0 else "half_open", ms / 1000.0, version, changed)


class CircuitBreaker:
    """The Redis side of the breakers of all models. Thread-safe; one per process is enough."""

    def __init__(
        self, client: redis.Redis, *, clock: Callable[[], float] | None = None, channel: str = GUARD_CHANNEL
    ) -> None:
        self._clock = clock
        self.channel = channel
        self._allow = client.register_script(_ALLOW)
        self._record = client.register_script(_RECORD)
        self._release = client.register_script(_RELEASE)
        self._state = client.register_script(_STATE)

    def _now(self) -> str:
        return "" if self._clock is None else repr(self._clock() * 1000.0)

    def allow(self, model_id: str, policy: BreakerPolicy) -> Permit:
        """May a call go out? Grants the single half-open probe to exactly one caller."""
        args = (self._now(), int(policy.probe_timeout_s * 1000), policy.ttl_ms())
        code, ms, version = (int(x) for x in self._allow(keys=(breaker_key(model_id),), args=args))
        if code == 3:
            return Permit("probe", 0.0, version, lease=ms)
        return Permit(_KINDS[code], ms / 1000.0, version)

    def record(self, model_id: str, policy: BreakerPolicy, *, failed: bool, probe: bool = False) -> BreakerState:
        """Count one call's outcome; a probe's outcome closes or re-opens the breaker."""
        args = (
            self._now(),
            int(failed),
            int(probe),
            policy.failures,
            int(policy.window_s * 1000),
            int(policy.cooldown_s * 1000),
            policy.failure_ratio or 0,
            policy.min_calls,
            self.channel,
            model_id,
            policy.ttl_ms(),
        )
        code, ms, version, changed = (int(x) for x in self._record(keys=(breaker_key(model_id),), args=args))
        return _state(code, ms, version, bool(changed))

    def release(self, model_id: str, permit: Permit) -> None:
        """Hand back a probe whose call ended without a verdict (cancelled, bad request)."""
        if permit.kind == "probe":
            self._release(keys=(breaker_key(model_id),), args=(permit.lease,))

    def state(self, model_id: str) -> BreakerState:
        code, ms, version = (int(x) for x in self._state(keys=(breaker_key(model_id),), args=(self._now(),)))
        return _state(code, ms, version)

"""A circuit breaker per ``provider:model``, shared by every worker through Redis.

States, as every worker sees them::

    closed --(enough failures in the window, and most of its calls failed)--> open
    open --(cooldown elapsed)--> half-open: exactly one caller gets the probe, others skip
    half-open --probe succeeds--> closed      half-open --probe fails--> open (new cooldown)

While open, the guard raises ``SkipModel`` so the fallback chain goes straight to the next model
without a request. What counts as a failure is the caller's decision (the guard counts errors
that say the model is unhealthy: 5xx, overload, timeouts, broken streams, first-token timeouts,
model not found, no quota; not 429s, which set the not-before time instead, and not errors caused
by the request itself).

It opens when the window holds at least ``failures`` failures **and** at least
``failure_ratio`` (default 0.8) of the window's calls failed: a breaker is for outages; a busy
model with a few percent of errors, or one failing every other first attempt, is left to the retry
and fallback wrappers. (``failure_ratio=None``: the count alone decides.) Successes cost no Redis
call: each process counts them locally and reports them with its next failure, which is the only
moment the share is judged. The window is sliding, kept as ten slots of ``window_s / 10`` in one
hash, so counting costs a fixed number of fields.

The error that opened the breaker (type, status, code, message) is stored with the open state and
announced, so a caller skipping the model can fail with that typed error when no model is left,
instead of a generic one, without sending a request.

Each operation is one Lua script on ``llmq:cb:{model}``; transitions bump a version and are
published on :data:`~workers.guards.ratelimit.GUARD_CHANNEL` so each process can mirror the state and
skip the Redis call while the breaker is closed (``workers/guards/shared.py``). Time comes from Redis
``TIME`` (one clock for all workers) unless a test injects ``clock``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import redis

from workers.guards.ratelimit import GUARD_CHANNEL, LUA_NOW

__all__ = ["BreakerPolicy", "BreakerState", "CircuitBreaker", "Permit", "breaker_key"]

_SLOTS = 10

# KEYS: state hash; ARGV: now|'', probe lease ms, ttl ms.
# Returns {code, ms, version, why}: 0 closed (go), 1 open (skip, ms until half-open),
# 2 half-open with a probe in flight (skip, ms until that probe's lease ends), 3 you are the probe
# (ms = your lease end, to release it).
_ALLOW = (
    LUA_NOW
    + """
local f = redis.call('HMGET', KEYS[1], 'st', 'until', 'probe', 'v', 'why')
local v = tonumber(f[4]) or 0
if f[1] ~= '1' then return {0, 0, v, ''} end
local why = f[5] or ''
local untl = tonumber(f[2]) or 0
if untl > now then return {1, math.ceil(untl - now), v, why} end
local probe = tonumber(f[3]) or 0
if probe > now then return {2, math.ceil(probe - now), v, why} end
local lease = math.floor(now + tonumber(ARGV[2]))
redis.call('HSET', KEYS[1], 'probe', lease)
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return {3, lease, v, why}
"""
)

# KEYS: state hash; ARGV: now|'', failed 0/1, probe 0/1, threshold, window ms, cooldown ms,
# ratio (0 = count only), successes reported with this call, channel, model, ttl ms, why (JSON).
# Returns {state 0 closed / 1 open, ms until half-open, version, changed 0/1, why}.
_RECORD = (
    LUA_NOW
    + """
local key = KEYS[1]
local failed, probe = ARGV[2] == '1', ARGV[3] == '1'
local f = redis.call('HMGET', key, 'st', 'until', 'v', 'why')
local v = tonumber(f[3]) or 0
local function move(open)
  v = v + 1
  for i = 0, 9 do redis.call('HDEL', key, 'e' .. i, 'f' .. i, 'c' .. i) end
  local ms, why = 0, ''
  if open then
    ms, why = tonumber(ARGV[6]), ARGV[12]
    redis.call('HSET', key, 'st', 1, 'until', math.floor(now + ms), 'probe', 0, 'v', v, 'why', why)
  else
    redis.call('HSET', key, 'st', 0, 'until', 0, 'probe', 0, 'v', v, 'why', '')
  end
  redis.call('PEXPIRE', key, ARGV[11])
  local state = open and 'open' or 'closed'
  redis.call('PUBLISH', ARGV[9], cjson.encode({k = 'cb', m = ARGV[10], st = state, ms = ms, v = v, why = why}))
  return {open and 1 or 0, ms, v, 1, why}
end
if f[1] == '1' then
  if probe then return move(failed) end
  -- a late result of a call started before the breaker opened: not counted
  return {1, math.max(0, math.ceil((tonumber(f[2]) or 0) - now)), v, 0, f[4] or ''}
end
local slot_ms = tonumber(ARGV[5]) / 10
local slot = math.floor(now / slot_ms)
local i = slot % 10
if tonumber(redis.call('HGET', key, 'e' .. i)) ~= slot then
  redis.call('HSET', key, 'e' .. i, slot, 'f' .. i, 0, 'c' .. i, 0)
end
redis.call('HINCRBY', key, 'c' .. i, 1 + tonumber(ARGV[8]))
if failed then redis.call('HINCRBY', key, 'f' .. i, 1) end
redis.call('PEXPIRE', key, ARGV[11])
if not failed then return {0, 0, v, 0, ''} end
local fails, calls = 0, 0
for j = 0, 9 do
  local e = tonumber(redis.call('HGET', key, 'e' .. j))
  if e and e > slot - 10 then
    fails = fails + (tonumber(redis.call('HGET', key, 'f' .. j)) or 0)
    calls = calls + (tonumber(redis.call('HGET', key, 'c' .. j)) or 0)
  end
end
local ratio = tonumber(ARGV[7])
if fails >= tonumber(ARGV[4]) and (ratio <= 0 or fails >= ratio * calls) then
  return move(true)
end
return {0, 0, v, 0, ''}
"""
)

# KEYS: state hash; ARGV: lease. Gives the probe back (the call ended without telling anything).
_RELEASE = """
if tonumber(redis.call('HGET', KEYS[1], 'probe')) == tonumber(ARGV[1]) then
  redis.call('HSET', KEYS[1], 'probe', 0)
end
return 0
"""

# KEYS: state hash; ARGV: now|''. Returns {0 closed / 1 open, ms until half-open, version, why}.
_STATE = (
    LUA_NOW
    + """
local f = redis.call('HMGET', KEYS[1], 'st', 'until', 'v', 'why')
local v = tonumber(f[3]) or 0
if f[1] ~= '1' then return {0, 0, v, ''} end
return {1, math.max(0, math.ceil((tonumber(f[2]) or 0) - now)), v, f[4] or ''}
"""
)


def breaker_key(model_id: str) -> str:
    return f"llmq:cb:{{{model_id}}}"


@dataclass(frozen=True, slots=True)
class BreakerPolicy:
    #: Open after this many failures within ``window_s``...
    failures: int = 5
    window_s: float = 60.0
    #: ...when at least this share of the window's calls failed (None: the count alone)...
    failure_ratio: float | None = 0.8
    #: ...and stay open this long before letting one probe through.
    cooldown_s: float = 30.0
    #: A probe that never reports back (its worker died) is replaced after this long.
    probe_timeout_s: float = 120.0

    def __post_init__(self) -> None:
        if self.failures < 1 or self.window_s <= 0 or self.cooldown_s <= 0 or self.probe_timeout_s <= 0:
            raise ValueError("breaker failures, window, cooldown and probe timeout must be > 0")
        if self.failure_ratio is not None and not 0 < self.failure_ratio <= 1:
            raise ValueError("failure_ratio must be in (0, 1]")

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
    #: The error that opened the breaker, as :meth:`CircuitBreaker.record` was given it.
    why: str = ""

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
    #: While open: the error that opened it (see ``why`` of :meth:`CircuitBreaker.record`).
    why: str = ""


_KINDS: tuple[Literal["closed", "open", "busy", "probe"], ...] = ("closed", "open", "busy", "probe")


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _state(code: int, ms: int, version: int, changed: bool = False, why: bytes | str = "") -> BreakerState:
    if code == 0:
        return BreakerState("closed", 0.0, version, changed)
    return BreakerState("open" if ms > 0 else "half_open", ms / 1000.0, version, changed, _text(why))


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
        code, ms, version, why = self._allow(keys=(breaker_key(model_id),), args=args)
        code, ms, version = int(code), int(ms), int(version)
        if code == 3:
            return Permit("probe", 0.0, version, lease=ms, why=_text(why))
        return Permit(_KINDS[code], ms / 1000.0, version, why=_text(why))

    def record(
        self,
        model_id: str,
        policy: BreakerPolicy,
        *,
        failed: bool,
        probe: bool = False,
        successes: int = 0,
        why: str = "",
    ) -> BreakerState:
        """Count one call's outcome, plus ``successes`` counted locally since the last report.

        A probe's outcome closes or re-opens the breaker. ``why`` describes the failure (any
        string; the guards store a small JSON object) and is kept while the breaker is open.
        """
        args = (
            self._now(),
            int(failed),
            int(probe),
            policy.failures,
            int(policy.window_s * 1000),
            int(policy.cooldown_s * 1000),
            policy.failure_ratio or 0,
            max(int(successes), 0),
            self.channel,
            model_id,
            policy.ttl_ms(),
            why,
        )
        code, ms, version, changed, reason = self._record(keys=(breaker_key(model_id),), args=args)
        return _state(int(code), int(ms), int(version), bool(int(changed)), reason)

    def release(self, model_id: str, permit: Permit) -> None:
        """Hand back a probe whose call ended without a verdict (cancelled, bad request)."""
        if permit.kind == "probe":
            self._release(keys=(breaker_key(model_id),), args=(permit.lease,))

    def state(self, model_id: str) -> BreakerState:
        code, ms, version, why = self._state(keys=(breaker_key(model_id),), args=(self._now(),))
        return _state(int(code), int(ms), int(version), why=why)

-- Reserve a worst-case amount against every scope at once, or against none.
-- KEYS: [1] limits HASH (scope -> micro-USD), [2] settled marker of this job attempt,
--       [3] the month's scope SET, then per scope: counters, leases, amounts.
-- ARGV: [1] reservation id, [2] amount, [3] lease ms, [4] kill-switch ratio, [5] month key TTL s,
--       then per scope: name, default limit ('' = unlimited).
-- Returns {'ok', expires_ms, spent, reserved, limit, ...per scope},
--         {'settled', charged} when this attempt was already settled, or
--         {'kill_switch' | 'limit', scope, spent, reserved, limit} on refusal (nothing written).
local id, amount, lease_ms = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local ratio, ttl = tonumber(ARGV[4]), tonumber(ARGV[5])
local n = (#KEYS - 3) / 3

local charged = redis.call('GET', KEYS[2])
if charged then
  return {'settled', charged}
end

local now = now_ms()
local state = {}
for i = 1, n do
  local counters, leases, amounts = KEYS[1 + 3 * i], KEYS[2 + 3 * i], KEYS[3 + 3 * i]
  local name = ARGV[4 + 2 * i]
  purge(counters, leases, amounts, now)
  local spent = num(redis.call('HGET', counters, 'spent'))
  -- a redelivered attempt replaces its own earlier lease instead of adding to it
  local previous = num(redis.call('HGET', amounts, id))
  local reserved = num(redis.call('HGET', counters, 'reserved')) - previous
  local limit = redis.call('HGET', KEYS[1], name) or ARGV[5 + 2 * i]
  if limit ~= '' then
    limit = tonumber(limit)
    if spent >= limit * ratio then
      return {'kill_switch', name, spent, reserved, limit}
    end
    if spent + reserved + amount > limit then
      return {'limit', name, spent, reserved, limit}
    end
  else
    limit = -1
  end
  state[i] = {spent, reserved + amount, limit, previous}
end

local expires = now + lease_ms
local out = {'ok', expires}
for i = 1, n do
  local counters, leases, amounts = KEYS[1 + 3 * i], KEYS[2 + 3 * i], KEYS[3 + 3 * i]
  local s = state[i]
  redis.call('HINCRBY', counters, 'reserved', amount - s[4])
  redis.call('HSET', amounts, id, amount)
  redis.call('ZADD', leases, expires, id)
  redis.call('EXPIRE', counters, ttl)
  redis.call('EXPIRE', leases, ttl)
  redis.call('EXPIRE', amounts, ttl)
  redis.call('SADD', KEYS[3], ARGV[4 + 2 * i])
  table.insert(out, s[1])
  table.insert(out, s[2])
  table.insert(out, s[3])
end
redis.call('EXPIRE', KEYS[3], ttl)
return out

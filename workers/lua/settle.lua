-- Charge the actual cost of one job attempt, exactly once, and free its lease.
-- KEYS: [1] settled marker of this job attempt, [2] the month's scope SET, [3] limits HASH,
--       then per scope: counters, leases, amounts.
-- ARGV: [1] reservation id, [2] actual amount, [3] marker TTL s, [4] month key TTL s,
--       then per scope: name, default limit ('' = unlimited).
-- Returns {'ok', spent, reserved, limit, ...per scope} (limit -1 = unlimited),
--         or {'duplicate', amount charged the first time}.
-- The charge lands even when the lease already expired: the provider billed us regardless.
local id, actual = ARGV[1], tonumber(ARGV[2])
local marker_ttl, ttl = tonumber(ARGV[3]), tonumber(ARGV[4])
local n = (#KEYS - 3) / 3

local charged = redis.call('GET', KEYS[1])
if charged then
  return {'duplicate', charged}
end
redis.call('SET', KEYS[1], actual, 'EX', marker_ttl)

local now = now_ms()
local out = {'ok'}
for i = 1, n do
  local counters, leases, amounts = KEYS[1 + 3 * i], KEYS[2 + 3 * i], KEYS[3 + 3 * i]
  local name = ARGV[3 + 2 * i]
  purge(counters, leases, amounts, now)
  drop_lease(counters, leases, amounts, id)
  local spent = redis.call('HINCRBY', counters, 'spent', actual)
  redis.call('EXPIRE', counters, ttl)
  redis.call('SADD', KEYS[2], name)
  local limit = redis.call('HGET', KEYS[3], name) or ARGV[4 + 2 * i]
  table.insert(out, spent)
  table.insert(out, num(redis.call('HGET', counters, 'reserved')))
  table.insert(out, limit == '' and -1 or tonumber(limit))
end
redis.call('EXPIRE', KEYS[2], ttl)
return out

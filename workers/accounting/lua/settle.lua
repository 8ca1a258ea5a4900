-- Charge the actual cost of one job attempt, exactly once, and free its lease.
-- KEYS: [1] settled marker of this job attempt, [2] the month's scope SET, [3] limits HASH,
--       then per scope: state, leases.
-- ARGV: [1] reservation id, [2] actual amount, [3] marker TTL s, [4] month key TTL s,
--       then per scope: name, default limit ('' = unlimited).
-- Returns {'ok', spent, reserved, limit, ...per scope} (limit -1 = unlimited),
--         or {'duplicate', amount charged the first time}.
-- The charge lands even when the lease already expired: the provider billed us regardless.
local id, actual = ARGV[1], tonumber(ARGV[2])
local marker_ttl, ttl = tonumber(ARGV[3]), tonumber(ARGV[4])
local field = 'r:' .. id
local n = (#KEYS - 3) / 2

local charged = redis.call('GET', KEYS[1])
if charged then
  return {'duplicate', charged}
end
redis.call('SET', KEYS[1], actual, 'EX', marker_ttl)

local names = {}
for i = 1, n do
  names[i] = ARGV[3 + 2 * i]
end
local stored = redis.call('HMGET', KEYS[3], unpack(names))
local now = now_ms()
local out = {'ok'}
for i = 1, n do
  local state, leases = KEYS[2 + 2 * i], KEYS[3 + 2 * i]
  purge(state, leases, now)
  local row = redis.call('HMGET', state, 'spent', 'reserved', field)
  local spent, reserved = num(row[1]) + actual, num(row[2]) - num(row[3])
  redis.call('HSET', state, 'spent', spent, 'reserved', reserved)
  if row[3] then
    redis.call('HDEL', state, field)
    redis.call('ZREM', leases, id)
  end
  redis.call('EXPIRE', state, ttl)
  table.insert(out, spent)
  table.insert(out, reserved)
  table.insert(out, limit_of(stored[i], ARGV[4 + 2 * i]))
end
redis.call('SADD', KEYS[2], unpack(names))
redis.call('EXPIRE', KEYS[2], ttl)
return out

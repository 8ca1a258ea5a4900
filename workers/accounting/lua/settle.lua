-- Charge the actual cost of one job attempt, exactly once, free its lease, and add the cost to the
-- spend report's rows (tenant, model, tags, user; per UTC day and month).
-- KEYS: [1] settled marker of this job attempt, [2] the month's scope SET, [3] limits HASH,
--       [4] the day's and [5] the month's `other` HASH (dimension -> micro-USD not in a row of its own),
--       then per scope: state, leases,
--       then per report row: the day's ZSET, the month's ZSET (value -> micro-USD) of its dimension.
-- ARGV: [1] reservation id, [2] actual amount, [3] marker TTL s, [4] month key TTL s, [5] day key TTL s,
--       [6] number of scopes, then per scope: name, default limit ('' = unlimited), hold ('1' or '0',
--       as for reserve), then per report row: dimension, value, rows kept (K), pinnable ('1': a value
--       with a stored limit keeps its row), the JSON list of the dimension's values with a limit in
--       the workers' config (they keep their rows too; '' = none).
-- Returns {'ok', then per scope written: index, spent, reserved, limit} (limit -1 = unlimited),
--         or {'duplicate', amount charged the first time}.
-- The charge lands even when the lease already expired: the provider billed us regardless.
-- Report rows are a top-K by spend: a value without a row takes the smallest row (which moves to
-- `other`) when its amount is larger, else it is added to `other`. Totals stay exact.
local id, actual = ARGV[1], tonumber(ARGV[2])
local marker_ttl, ttl, day_ttl = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local n = tonumber(ARGV[6])
local field = 'r:' .. id

local charged = redis.call('GET', KEYS[1])
if charged then
  return {'duplicate', charged}
end
redis.call('SET', KEYS[1], actual, 'EX', marker_ttl)

local names = {}
for i = 1, n do
  names[i] = ARGV[4 + 3 * i]
end
local stored = redis.call('HMGET', KEYS[3], unpack(names))
local now = now_ms()
local out = {'ok'}
local members = {}
for i = 1, n do
  local state, leases = KEYS[4 + 2 * i], KEYS[5 + 2 * i]
  local limit = limit_of(stored[i], ARGV[5 + 3 * i])
  -- a tag or user without a budget keeps no state (its spend is in the report rows only), unless it
  -- still holds a lease taken while it had one
  if ARGV[6 + 3 * i] == '1' or limit >= 0 or redis.call('HEXISTS', state, field) == 1 then
    purge(state, leases, now)
    local row = redis.call('HMGET', state, 'spent', 'reserved', field)
    local spent, reserved = num(row[1]) + actual, num(row[2]) - num(row[3])
    redis.call('HSET', state, 'spent', spent, 'reserved', reserved)
    if row[3] then
      redis.call('HDEL', state, field)
      redis.call('ZREM', leases, id)
    end
    redis.call('EXPIRE', state, ttl)
    members[#members + 1] = names[i]
    table.insert(out, i)
    table.insert(out, spent)
    table.insert(out, reserved)
    table.insert(out, limit)
  end
end
if #members > 0 then
  redis.call('SADD', KEYS[2], unpack(members))
  redis.call('EXPIRE', KEYS[2], ttl)
end

local function count(rows, other, key_ttl, dim, value, k, pinnable, configured)
  if redis.call('ZSCORE', rows, value) then
    redis.call('ZINCRBY', rows, actual, value)
    return
  end
  local function pinned(who)
    return pinnable and (configured[who] or redis.call('HEXISTS', KEYS[3], dim .. ':' .. who) == 1)
  end
  local size = redis.call('ZCARD', rows)
  if size < k or pinned(value) then
    redis.call('ZADD', rows, actual, value)
    if size == 0 then
      redis.call('EXPIRE', rows, key_ttl)
    end
    return
  end
  -- full: the smallest rows (ascending) that are not pinned by a limit make room for a larger amount
  local lowest = redis.call('ZRANGE', rows, 0, 7, 'WITHSCORES')
  for j = 1, #lowest, 2 do
    local who, spent = lowest[j], lowest[j + 1]
    if actual <= tonumber(spent) then
      break
    end
    if not pinned(who) then
      redis.call('ZREM', rows, who)
      redis.call('HINCRBY', other, dim, spent)
      redis.call('EXPIRE', other, key_ttl)
      redis.call('ZADD', rows, actual, value)
      return
    end
  end
  redis.call('HINCRBY', other, dim, actual)
  redis.call('EXPIRE', other, key_ttl)
end

local base = 5 + 2 * n
for r = 1, (#KEYS - base) / 2 do
  local a = 2 + 3 * n + 5 * r
  local dim, value, k, pinnable = ARGV[a], ARGV[a + 1], tonumber(ARGV[a + 2]), ARGV[a + 3] == '1'
  local configured = {}
  if ARGV[a + 4] ~= '' then
    for _, who in ipairs(cjson.decode(ARGV[a + 4])) do
      configured[who] = true
    end
  end
  count(KEYS[base + 2 * r - 1], KEYS[4], day_ttl, dim, value, k, pinnable, configured)
  count(KEYS[base + 2 * r], KEYS[5], ttl, dim, value, k, pinnable, configured)
end
return out

-- Shared by every ledger script (prepended when the script is loaded; see workers/budget.py).
-- Money is integer micro-USD. Per scope and UTC month there are two keys:
--   state HASH {spent, reserved, r:<reservation id> -> amount held},
--   leases ZSET (reservation id -> expiry, ms). `reserved` is the sum of the live r: fields.

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Give back the amounts of leases that expired (a worker died holding them).
local function purge(state, leases, now)
  while true do
    local expired = redis.call('ZRANGEBYSCORE', leases, '-inf', now, 'LIMIT', 0, 256)
    if #expired == 0 then
      return
    end
    local fields = {}
    for i, id in ipairs(expired) do
      fields[i] = 'r:' .. id
    end
    local freed = 0
    for _, amount in ipairs(redis.call('HMGET', state, unpack(fields))) do
      if amount then
        freed = freed + tonumber(amount)
      end
    end
    redis.call('HDEL', state, unpack(fields))
    redis.call('ZREM', leases, unpack(expired))
    redis.call('HINCRBY', state, 'reserved', -freed)
  end
end

local function num(value)
  return tonumber(value or '0') or 0
end

-- The limit of scope i: stored (HMGET reply) else the caller's default ('' = unlimited => -1).
local function limit_of(stored, default)
  local limit = stored or default
  if limit == '' then
    return -1
  end
  return tonumber(limit)
end

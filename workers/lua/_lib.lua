-- Shared by every ledger script (prepended when the script is loaded; see workers/budget.py).
-- Money is integer micro-USD. Per scope and UTC month there are three keys:
--   counters HASH {spent, reserved}, leases ZSET (reservation id -> expiry ms),
--   amounts HASH (reservation id -> micro-USD). `reserved` is the sum of live amounts.

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Give back the amounts of leases that expired (a worker died holding them).
local function purge(counters, leases, amounts, now)
  while true do
    local expired = redis.call('ZRANGEBYSCORE', leases, '-inf', now, 'LIMIT', 0, 256)
    if #expired == 0 then
      return
    end
    local freed = 0
    local held = redis.call('HMGET', amounts, unpack(expired))
    for _, amount in ipairs(held) do
      if amount then
        freed = freed + tonumber(amount)
      end
    end
    redis.call('HDEL', amounts, unpack(expired))
    redis.call('ZREM', leases, unpack(expired))
    redis.call('HINCRBY', counters, 'reserved', -freed)
  end
end

-- Remove one reservation's lease; returns the amount it held (0 if none).
local function drop_lease(counters, leases, amounts, id)
  local held = tonumber(redis.call('HGET', amounts, id) or '0')
  if held ~= 0 then
    redis.call('HINCRBY', counters, 'reserved', -held)
  end
  redis.call('HDEL', amounts, id)
  redis.call('ZREM', leases, id)
  return held
end

local function num(value)
  return tonumber(value or '0') or 0
end

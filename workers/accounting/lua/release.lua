-- Free a reservation without charging (the call failed before the provider billed anything).
-- KEYS: per scope that held it: state, leases. ARGV: [1] reservation id.
-- Returns the amount that was held (0 when the lease was already settled, released or expired).
local id = ARGV[1]
local field = 'r:' .. id
local now = now_ms()
local held = 0
for i = 1, #KEYS / 2 do
  local state, leases = KEYS[2 * i - 1], KEYS[2 * i]
  purge(state, leases, now)
  held = num(redis.call('HGET', state, field))
  if held ~= 0 then
    redis.call('HINCRBY', state, 'reserved', -held)
    redis.call('HDEL', state, field)
  end
  redis.call('ZREM', leases, id)
end
return held

-- Free a reservation without charging (the call failed before the provider billed anything).
-- KEYS: per scope: counters, leases, amounts. ARGV: [1] reservation id.
-- Returns the amount that was held (0 when the lease was already settled, released or expired).
local id = ARGV[1]
local now = now_ms()
local held = 0
for i = 1, #KEYS / 3 do
  local counters, leases, amounts = KEYS[3 * i - 2], KEYS[3 * i - 1], KEYS[3 * i]
  purge(counters, leases, amounts, now)
  held = drop_lease(counters, leases, amounts, id)
end
return held

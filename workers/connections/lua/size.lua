-- How many messages a queue holds (not held by a worker): its kombu list, every tenant's lists, the
-- parked ones. KEYS[1] the kombu list, KEYS[2] P.
local Q, P = KEYS[1], KEYS[2]
local n = redis.call('LLEN', Q)
local tenants = {}
for c in pairs(CLASSES) do
  for _, t in ipairs(redis.call('ZRANGE', P .. 'ring:' .. c, 0, -1)) do tenants[t] = true end
end
for _, t in ipairs(redis.call('SMEMBERS', P .. 'blocked')) do tenants[t] = true end
for t in pairs(tenants) do
  for c in pairs(CLASSES) do n = n + redis.call('LLEN', tlist(P, c, t)) end
end
for _, v in ipairs(redis.call('HVALS', P .. 'parked')) do n = n + tonumber(v) end
return n

-- A queue's schedule as numbers, read in one step (nothing moves between the counts: a job is
-- counted queued or held, once). Writes nothing. KEYS[1] the queue's kombu list, KEYS[2] P.
-- Returns {unscheduled, lists, limited, parks, parked, held}:
--   lists    flat class, tenant, length, oldest payload ('' when empty) of every list with work
--            (tenants in the rings, and blocked tenants' classes)
--   limited  flat class, tenant of the classes a tenant at max_concurrency keeps out of the ring
--   parks    flat '<tenant>:<key>', oldest parked payload of every key with parked jobs
--   parked   flat '<class>\t<tenant>', count: parked jobs per class and tenant
--   held     flat class, tenant, count of the jobs held by workers (running or about to)
local Q, P = KEYS[1], KEYS[2]
local seen, lists, limited = {}, {}, {}
local function list(c, t)
  local id = c .. '\t' .. t
  if seen[id] then return end
  seen[id] = true
  local L = tlist(P, c, t)
  local n = redis.call('LLEN', L)
  lists[#lists + 1] = c
  lists[#lists + 1] = t
  lists[#lists + 1] = n
  lists[#lists + 1] = n > 0 and redis.call('LINDEX', L, -1) or ''
end
for c in pairs(CLASSES) do
  for _, t in ipairs(redis.call('ZRANGE', P .. 'ring:' .. c, 0, -1)) do list(c, t) end
end
for _, t in ipairs(redis.call('SMEMBERS', P .. 'blocked')) do
  for _, c in ipairs(redis.call('SMEMBERS', P .. 'blk:' .. t)) do
    limited[#limited + 1] = c
    limited[#limited + 1] = t
    list(c, t)
  end
end
local parks = {}
for _, tk in ipairs(redis.call('SMEMBERS', P .. 'parkedkeys')) do
  local oldest = redis.call('LINDEX', P .. 'park:' .. tk, -1)
  if oldest then
    parks[#parks + 1] = tk
    parks[#parks + 1] = oldest
  end
end
local counts, held = {}, {}
local fields = redis.call('HGETALL', HELD)
for i = 2, #fields, 2 do
  local p, c, t = string.match(fields[i], '^([^\t]*)\t([^\t]*)\t([^\t]*)\t')
  if p == P then
    local id = c .. '\t' .. t
    counts[id] = (counts[id] or 0) + 1
  end
end
for id, n in pairs(counts) do
  local c, t = string.match(id, '^([^\t]*)\t(.*)$')
  held[#held + 1] = c
  held[#held + 1] = t
  held[#held + 1] = n
end
return {redis.call('LLEN', Q), lists, limited, parks, redis.call('HGETALL', P .. 'parkedc'), held}

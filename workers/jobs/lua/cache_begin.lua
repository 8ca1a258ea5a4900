-- A cacheable job's first step, in one round trip: its answer from the cache, or the lead of its
-- single flight, or the id of the job leading it. Also keeps the cache's books: forgets entries
-- whose TTL ran out, and evicts those closest to expiry while the total passes the bound (stores
-- happen inside the leaders' terminal writes, which cannot run this logic).
-- KEYS: [1] the entry, [2] the entry's lead, [3] index ZSET (member -> expiry ms), [4] sizes HASH,
--       [5] total bytes.
-- ARGV: [1] this job's id, [2] lead TTL ms, [3] '' (take the lead only if nobody holds it) or the id
--       of a leader this job saw fail or die (take the lead over from it, unless someone else took
--       it already), [4] the member, [5] max total bytes, [6] entry key prefix.
-- Every entry key is `<prefix><member>` and shares the {cache} hash tag with these keys.
-- Returns {'hit', value, bytes, entries}, {'lead', '', bytes, entries} or {'follow', leader, bytes, entries}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local function drop(member)
  local size = tonumber(redis.call('HGET', KEYS[4], member) or '0')
  redis.call('HDEL', KEYS[4], member)
  redis.call('ZREM', KEYS[3], member)
  redis.call('DECRBY', KEYS[5], size)
end

for _, member in ipairs(redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now, 'LIMIT', 0, 64)) do
  drop(member)
end
local limit = tonumber(ARGV[5])
if redis.call('ZCARD', KEYS[3]) == 0 then
  redis.call('SET', KEYS[5], 0) -- nothing listed: nothing counted (no drift can outlive an empty cache)
end
local total = tonumber(redis.call('GET', KEYS[5]) or '0')
while total > limit do
  local oldest = redis.call('ZRANGE', KEYS[3], 0, 0)
  if #oldest == 0 then break end
  drop(oldest[1])
  redis.call('DEL', ARGV[6] .. oldest[1])
  total = tonumber(redis.call('GET', KEYS[5]) or '0')
end

local value = redis.call('GET', KEYS[1])
if value then
  return {'hit', value, total, redis.call('ZCARD', KEYS[3])}
end
if redis.call('ZSCORE', KEYS[3], ARGV[4]) then
  drop(ARGV[4]) -- listed but gone: its bytes no longer count (and a new store adds them again)
end
local entries = redis.call('ZCARD', KEYS[3])
local holder = redis.call('GET', KEYS[2])
if holder == false or holder == ARGV[1] or (ARGV[3] ~= '' and holder == ARGV[3]) then
  redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
  return {'lead', '', total, entries}
end
return {'follow', holder, total, entries}

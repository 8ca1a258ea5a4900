-- Take one given payload that Lua's cjson cannot read (Python read it) from the tail end of its list.
-- KEYS[1] unacked, KEYS[2] unacked_index; ARGV[1] the list, ARGV[2] the payload, ARGV[3] its tag,
-- ARGV[4] the unacked entry, ARGV[5] the clock, ARGV[6] P ('' for a list the scheduler does not
-- keep), ARGV[7] class, ARGV[8] tenant, ARGV[9] concurrency key ('' if none).
-- 1 if taken, 0 if gone (another consumer took it). The ring forgets an emptied list at the next pick.
if redis.call('LREM', ARGV[1], -1, ARGV[2]) == 0 then
  return 0
end
local tag = ARGV[3]
redis.call('HSET', KEYS[1], tag, ARGV[4])
redis.call('ZADD', KEYS[2], ARGV[5], tag)
local P, t, k = ARGV[6], ARGV[8], ARGV[9]
if P ~= '' then
  redis.call('SADD', P .. 'run:t:' .. t, tag)
  if k ~= '' then redis.call('SADD', P .. 'run:k:' .. t .. ':' .. k, tag) end
  redis.call('HSET', HELD, tag, P .. '\t' .. ARGV[7] .. '\t' .. t .. '\t' .. k)
end
return 1

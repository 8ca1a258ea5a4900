-- Store (or remove) a scope's monthly limit. A tag or user that had no budget kept no state this
-- month, only report rows: its state starts from what the month's row says it spent so far.
-- KEYS: [1] limits HASH, [2] the scope's state this month, [3] the month's scope SET,
--       [4] the month's report ZSET of the scope's dimension ('' when it has none).
-- ARGV: [1] scope, [2] micro-USD ('' removes the limit), [3] the value in the report, [4] month TTL s.
-- Returns the spend the state was seeded with (micro-USD), or -1 when nothing was seeded.
if ARGV[2] == '' then
  redis.call('HDEL', KEYS[1], ARGV[1])
  return -1
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
if redis.call('EXISTS', KEYS[2]) == 1 then
  return -1
end
local seen = redis.call('ZSCORE', KEYS[4], ARGV[3])
if not seen then
  return -1
end
redis.call('HSET', KEYS[2], 'spent', seen, 'reserved', 0)
redis.call('EXPIRE', KEYS[2], tonumber(ARGV[4]))
redis.call('SADD', KEYS[3], ARGV[1])
redis.call('EXPIRE', KEYS[3], tonumber(ARGV[4]))
return tonumber(seen)

-- Delete response cache entries (purge). KEYS: [1] index ZSET, [2] sizes HASH, [3] total bytes.
-- ARGV: [1] entry key prefix, then the members to drop. Returns how many existed.
local dropped = 0
for i = 2, #ARGV do
  local member = ARGV[i]
  local size = redis.call('HGET', KEYS[2], member)
  if size then
    redis.call('DECRBY', KEYS[3], tonumber(size))
    redis.call('HDEL', KEYS[2], member)
  end
  dropped = dropped + redis.call('ZREM', KEYS[1], member)
  redis.call('DEL', ARGV[1] .. member)
end
return dropped

-- Forget acked (or dropped) messages: their unacked entries and the slots they held. KEYS[1] unacked,
-- KEYS[2] unacked_index; ARGV the delivery tags.
for _, tag in ipairs(ARGV) do
  redis.call('HDEL', KEYS[1], tag)
  redis.call('ZREM', KEYS[2], tag)
  release(tag)
end
return #ARGV

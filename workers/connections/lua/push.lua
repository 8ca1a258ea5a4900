-- Queue one message. KEYS[1] the queue's prefix P. ARGV[1] the payload as kombu serialized it, ARGV[2]
-- its class, ARGV[3] its tenant, ARGV[4] '1' to put it at the tail (taken next: a message given back)
-- else at the head, ARGV[5] its job id ('' if none): no longer a pending registration.
local P, c, t = KEYS[1], ARGV[2], ARGV[3]
if not CLASSES[c] then c = 'normal' end
push(P, c, t, ARGV[1], ARGV[4] == '1')
if ARGV[5] ~= '' then
  redis.call('ZREM', P .. 'pending:' .. t, ARGV[5])
end
return 1

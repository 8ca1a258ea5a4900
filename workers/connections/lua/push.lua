-- Queue one message. KEYS[1] the queue's prefix P, KEYS[2] its job's metadata hash (the producer's
-- registration; P again for a message without a job id). ARGV[1] the payload as kombu serialized it,
-- ARGV[2] its class, ARGV[3] its tenant, ARGV[4] '1' to put it at the tail (taken next: a message
-- given back) else at the head, ARGV[5] its job id ('' if none): no longer a pending registration,
-- ARGV[6] the queue's name. When the registration is in this Redis, the send is recorded in it in the
-- same step ('sent', 'queue': what the producer wrote with a round trip of its own before).
local P, c, t = KEYS[1], ARGV[2], ARGV[3]
if not CLASSES[c] then c = 'normal' end
push(P, c, t, ARGV[1], ARGV[4] == '1')
if ARGV[5] ~= '' then
  redis.call('ZREM', P .. 'pending:' .. t, ARGV[5])
  if redis.call('EXISTS', KEYS[2]) == 1 then
    redis.call('HSET', KEYS[2], 'sent', '1', 'queue', ARGV[6])
  end
end
return 1

-- Queue one message. KEYS[1] the queue's prefix P, KEYS[2] its job's metadata hash (the producer's
-- registration; P again for a message without a job id). ARGV[1] the payload as kombu serialized it,
-- ARGV[2] its class, ARGV[3] its tenant, ARGV[4] '1' to put it at the tail (taken next: a message
-- given back) else at the head, ARGV[5] its job id ('' if none): no longer a pending registration,
-- ARGV[6] the queue's name, ARGV[7] '1' for a producer's send of a registered job (pushed once).
-- When the registration is in this Redis, the send is recorded in it in the same step ('sent',
-- 'queue': what the producer wrote with a round trip of its own before).
-- A producer's send is the first push of its registration: finding the registration already sent
-- (or, with the registration in another Redis, this job's recent send remembered here), it is the
-- same send repeated after its reply was lost (a restart, a fail-over, a cut connection) and queues
-- nothing: 0. A worker's re-queue of a running job is not a producer's send and is always pushed.
local SENT_MEMORY_S = 120  -- how long P..'sent:<id>' remembers a send (the producer rides out 30 s)
local P, c, t, id = KEYS[1], ARGV[2], ARGV[3], ARGV[5]
if id ~= '' and ARGV[7] == '1' then
  if redis.call('EXISTS', KEYS[2]) == 1 then
    if redis.call('HEXISTS', KEYS[2], 'sent') == 1 then return 0 end
  elseif not redis.call('SET', P .. 'sent:' .. id, '1', 'NX', 'EX', SENT_MEMORY_S) then
    return 0
  end
end
if not CLASSES[c] then c = 'normal' end
push(P, c, t, ARGV[1], ARGV[4] == '1')
if id ~= '' then
  redis.call('ZREM', P .. 'pending:' .. t, id)
  if redis.call('EXISTS', KEYS[2]) == 1 then
    redis.call('HSET', KEYS[2], 'sent', '1', 'queue', ARGV[6])
  end
end
return 1

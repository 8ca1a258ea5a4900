-- Queue one message (push.lua, submit.lua). P the queue's prefix; meta its job's metadata hash (the
-- producer's registration; P again for a message without a job id); payload as kombu serialized it;
-- c its class, t its tenant; at_tail: put it at the tail (taken next: a message given back) else at
-- the head; id its job id ('' if none): no longer a pending registration; queue the queue's name;
-- once: a producer's send of a registered job (pushed once).
-- When the registration is in this Redis, the send is recorded in it in the same step ('sent',
-- 'queue': what the producer wrote with a round trip of its own before).
-- A producer's send is the first push of its registration: finding the registration already sent
-- (or, with the registration in another Redis, this job's recent send remembered here), it is the
-- same send repeated after its reply was lost (a restart, a fail-over, a cut connection) and queues
-- nothing: 0. A worker's re-queue of a running job is not a producer's send and is always pushed.
local SENT_MEMORY_S = 120  -- how long P..'sent:<id>' remembers a send (the producer rides out 30 s)

local function push_job(P, meta, payload, c, t, at_tail, id, queue, once)
  if id ~= '' and once then
    if redis.call('EXISTS', meta) == 1 then
      if redis.call('HEXISTS', meta, 'sent') == 1 then return 0 end
    elseif not redis.call('SET', P .. 'sent:' .. id, '1', 'NX', 'EX', SENT_MEMORY_S) then
      return 0
    end
  end
  if not CLASSES[c] then c = 'normal' end
  push(P, c, t, payload, at_tail)
  if id ~= '' then
    redis.call('ZREM', P .. 'pending:' .. t, id)
    if redis.call('EXISTS', meta) == 1 then
      redis.call('HSET', meta, 'sent', '1', 'queue', queue)
    end
  end
  return 1
end

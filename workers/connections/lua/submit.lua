-- A producer's submit in one step: register the job (register_lib.lua) and queue its message
-- (push_lib.lua), where the two used to be a round trip each. KEYS[1] the job's meta, KEYS[2] the
-- queue's prefix P. ARGV[1] tenant, ARGV[2] submitted_at, ARGV[3] meta TTL, ARGV[4] resend_after_s,
-- ARGV[5] the job id, ARGV[6] the message as kombu serializes it, ARGV[7] its class, ARGV[8] the
-- queue's name, ARGV[9] this submit call's nonce (its message's delivery tag: the same in each of
-- the call's tries). Replies as register_job: 1 (registered and queued), 2 (an unsent registration
-- sent again), 0 (a duplicate: nothing queued), or the refusal {-1, queued, max_queued, retry_after_s}.
local meta, P = KEYS[1], KEYS[2]
-- this same call tried again after its reply was lost (a restart, a fail-over): it registered and
-- queued the job, it is still 1 (another submit of the id, even with the same stamp, is a duplicate)
if redis.call('HGET', meta, 'submit') == ARGV[9] then
  return 1
end
local fresh = register_job(meta, P, ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5])
if type(fresh) == 'table' or fresh == 0 then return fresh end
push_job(P, meta, ARGV[6], ARGV[7], ARGV[1], false, ARGV[5], ARGV[8], true)
redis.call('HSET', meta, 'submit', ARGV[9])
return fresh

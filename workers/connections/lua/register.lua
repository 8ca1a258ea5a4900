-- Register a job (its metadata hash, the idempotency guard) and admit it under its tenant's
-- max_queued, in one step: a refused submit writes nothing.
-- KEYS[1] the job's meta, KEYS[2] the queue's prefix P ('' when the queue is not in this Redis:
-- counted by the broker's side then). ARGV[1] tenant, ARGV[2] submitted_at, ARGV[3] meta TTL,
-- ARGV[4] resend_after_s, ARGV[5] the job id.
-- 1 = newly registered; 0 = a duplicate id (already sent); 2 = registered earlier but its message was
-- never confirmed sent (the producer died in between) and is old enough: send it again (the worker's
-- claim still runs a job once); {-1, queued, max_queued, retry_after_s} = refused, nothing written.
local meta, P, t = KEYS[1], KEYS[2], ARGV[1]

-- nil when admitted (the job then counts as pending until its message is pushed), else the refusal
local function admit()
  local limit = P ~= '' and tenant_conf('mq', t) or nil
  if not limit then return nil end
  local now = redis.call('TIME')
  local secs = tonumber(now[1]) + tonumber(now[2]) / 1e6
  redis.call('ZREMRANGEBYSCORE', P .. 'pending:' .. t, '-inf', num(secs - PENDING_S))
  local n = queued(P, t)
  if n >= limit then
    return {-1, n, limit, conf('ra') or '2'}
  end
  redis.call('ZADD', P .. 'pending:' .. t, num(secs), ARGV[5])
  return nil
end

if redis.call('EXISTS', meta) == 0 then
  local refused = admit()
  if refused then return refused end
  redis.call('HSET', meta, 'state', 'queued', 'tenant', t, 'submitted_at', ARGV[2])
  redis.call('EXPIRE', meta, ARGV[3])
  return 1
end
if redis.call('HEXISTS', meta, 'sent') == 0 then
  local stamp = redis.call('HGET', meta, 'submitted_at')
  -- the same submit retried after a lost reply (a restart or fail-over): still this caller's registration
  if stamp == ARGV[2] then return 1 end
  local at = tonumber(stamp or '0')
  if tonumber(ARGV[2]) - at > tonumber(ARGV[4]) then
    local refused = admit()
    if refused then return refused end
    redis.call('HSET', meta, 'submitted_at', ARGV[2])
    return 2
  end
end
return 0

-- A job's registration (its metadata hash, the idempotency guard), admitted under its tenant's
-- max_queued, in one step: a refused registration writes nothing. Used by register.lua (a producer's
-- registration, its message sent after) and submit.lua (both in one step).
-- meta: the job's meta; P: the queue's prefix ('' when the queue is not in this Redis: counted by the
-- broker's side then); t: tenant; stamp: submitted_at; ttl: meta TTL; id: the job id.
-- 1 = newly registered; 0 = a duplicate id (already sent); 2 = registered earlier but its message was
-- never confirmed sent (the producer died in between) and is old enough: send it again (the worker's
-- claim still runs a job once); {-1, queued, max_queued, retry_after_s} = refused, nothing written.

-- nil when admitted (the job then counts as pending until its message is pushed), else the refusal
local function admit(P, t, id)
  local limit = P ~= '' and tenant_conf('mq', t) or nil
  if not limit then return nil end
  local now = redis.call('TIME')
  local secs = tonumber(now[1]) + tonumber(now[2]) / 1e6
  redis.call('ZREMRANGEBYSCORE', P .. 'pending:' .. t, '-inf', num(secs - PENDING_S))
  local n = queued(P, t)
  if n >= limit then
    return {-1, n, limit, conf('ra') or '2'}
  end
  redis.call('ZADD', P .. 'pending:' .. t, num(secs), id)
  return nil
end

local function register_job(meta, P, t, stamp, ttl, resend_after_s, id)
  if redis.call('EXISTS', meta) == 0 then
    local refused = admit(P, t, id)
    if refused then return refused end
    redis.call('HSET', meta, 'state', 'queued', 'tenant', t, 'submitted_at', stamp)
    redis.call('EXPIRE', meta, ttl)
    return 1
  end
  if redis.call('HEXISTS', meta, 'sent') == 0 then
    local at = redis.call('HGET', meta, 'submitted_at')
    -- the same submit retried after a lost reply (a restart or fail-over): still this caller's registration
    if at == stamp then return 1 end
    if tonumber(stamp) - tonumber(at or '0') > tonumber(resend_after_s) then
      local refused = admit(P, t, id)
      if refused then return refused end
      redis.call('HSET', meta, 'submitted_at', stamp)
      return 2
    end
  end
  return 0
end

-- Reserve a worst-case amount against every scope at once, or against none.
-- KEYS: [1] limits HASH (scope -> micro-USD), [2] settled marker of this job attempt,
--       [3] the month's scope SET, then per scope: state, leases.
-- ARGV: [1] reservation id, [2] amount, [3] lease ms, [4] kill-switch ratio, [5] month key TTL s,
--       then per scope: name, default limit ('' = unlimited), hold ('1' always; '0' only when the
--       scope has a limit: a tag or user without a budget holds nothing and writes nothing here).
-- Returns {'ok', expires_ms, then per held scope: index, spent, reserved, limit} (limit -1 = unlimited),
--         {'settled', charged} when this attempt was already settled, or
--         {'kill_switch' | 'limit' | 'busy', scope, spent, reserved, limit} on refusal (nothing written):
--         'limit' = settled spend + this amount alone passes the limit (it cannot fit, ever, this month);
--         'busy'  = it would fit once reservations in flight settle (spent + amount <= limit).
--         The most severe refusal over all scopes wins: kill_switch, then limit, then busy.
local id, amount, lease_ms = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local ratio, ttl = tonumber(ARGV[4]), tonumber(ARGV[5])
local field = 'r:' .. id
local n = (#KEYS - 3) / 2

local charged = redis.call('GET', KEYS[2])
if charged then
  return {'settled', charged}
end

local names = {}
for i = 1, n do
  names[i] = ARGV[3 + 3 * i]
end
local stored = redis.call('HMGET', KEYS[1], unpack(names))
local now = now_ms()
local held = {}
local refusal = nil
local severity = {busy = 1, limit = 2, kill_switch = 3}
for i = 1, n do
  local limit = limit_of(stored[i], ARGV[4 + 3 * i])
  if ARGV[5 + 3 * i] == '1' or limit >= 0 then
    local state, leases = KEYS[2 + 2 * i], KEYS[3 + 2 * i]
    purge(state, leases, now)
    local row = redis.call('HMGET', state, 'spent', 'reserved', field)
    -- a redelivered attempt replaces its own earlier lease instead of adding to it
    local spent, reserved = num(row[1]), num(row[2]) - num(row[3])
    if limit >= 0 then
      local why = nil
      if spent >= limit * ratio then
        why = 'kill_switch'
      elseif spent + amount > limit then
        why = 'limit'
      elseif spent + reserved + amount > limit then
        why = 'busy'
      end
      if why and (refusal == nil or severity[why] > severity[refusal[1]]) then
        refusal = {why, names[i], spent, reserved, limit}
      end
    end
    held[#held + 1] = {i, spent, reserved + amount, limit}
  end
end
if refusal then
  return refusal
end

local expires = now + lease_ms
local out = {'ok', expires}
local members = {}
for _, h in ipairs(held) do
  local i = h[1]
  local state, leases = KEYS[2 + 2 * i], KEYS[3 + 2 * i]
  redis.call('HSET', state, 'reserved', h[3], field, amount)
  redis.call('ZADD', leases, expires, id)
  redis.call('EXPIRE', state, ttl)
  redis.call('EXPIRE', leases, ttl)
  members[#members + 1] = names[i]
  for _, v in ipairs(h) do
    out[#out + 1] = v
  end
end
if #members > 0 then
  redis.call('SADD', KEYS[3], unpack(members))
  redis.call('EXPIRE', KEYS[3], ttl)
end
return out

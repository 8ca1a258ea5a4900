-- Decide who runs next and take it, in one step: up to ARGV[2] messages into the unacked bookkeeping.
-- KEYS[1] unacked, KEYS[2] unacked_index, then for each queue of the consumer's cycle its kombu list
-- (where producers that do not schedule put messages) and its prefix P. ARGV[1] the worker's clock,
-- ARGV[2] the limit, ARGV[3] the number of queues, ARGV[4] '1' when the cycle is round-robin (a queue
-- that gave a message goes last).
--
-- Each pick: the class with the lowest pass, in it the tenant with the lowest pass, its oldest
-- message; then the tenant's pass grows by 1/its weight and the class's by 1/its weight (stride
-- scheduling: while several have work, each gets picks in proportion to its weight, interleaved;
-- whoever has nothing queued is out of the rings and takes nothing). A tenant running its
-- max_concurrency leaves the ring until a slot frees (blk); a message whose concurrency key runs its
-- cap is parked until a slot of that key frees. Frees are noted by the release of a slot and acted on
-- here, first thing.
--
-- Returns rows {queue, payload, tag} in delivery order, a last row {list, payload} when Lua cannot
-- read that payload (Python reads it and takes it with claim.lua), then 1 if work is left queued, else 0.

local clock, limit, nq = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local rotate = ARGV[4] == '1'
local unacked, index = KEYS[1], KEYS[2]
local RETRY = 'retry'

-- messages on kombu's own list (a producer that does not schedule) join the scheduler's lists
local function ingest(Q, P)
  for _ = 1, 1000 do
    local item = redis.call('RPOP', Q)
    if not item then return end
    local ok, msg = pcall(cjson.decode, item)
    local c, t = attributes(ok and msg or nil)
    push(P, c, t, item, false)
  end
end

-- act on freed slots: a blocked tenant under its cap again rejoins its rings; a key's parked
-- messages, as many as it has free slots, go back to the tail of their tenant's lists, oldest next
local function wake(P)
  local freed = redis.call('SPOP', P .. 'freed', 1000)
  -- a configuration published since this queue's last fetch (a worker started with another file)
  -- may give a tenant at its cap or a parked key more room: look at each of them as if a slot freed
  local version = conf('v')
  if version and redis.call('GET', P .. 'confv') ~= version
      and redis.pcall('SET', P .. 'confv', version)['ok'] then
    local noted = {}
    for _, note in ipairs(freed) do noted[note] = true end
    local function note(n)
      if not noted[n] then
        noted[n] = true
        freed[#freed + 1] = n
      end
    end
    for _, t in ipairs(redis.call('SMEMBERS', P .. 'blocked')) do note('t:' .. t) end
    for _, tk in ipairs(redis.call('SMEMBERS', P .. 'parkedkeys')) do note('k:' .. tk) end
  end
  for _, note in ipairs(freed) do
    local kind, rest = string.sub(note, 1, 1), string.sub(note, 3)
    if kind == 't' then
      local t = rest
      local cap = tenant_conf('mc', t)
      if not cap or redis.call('SCARD', P .. 'run:t:' .. t) < cap then
        local classes = redis.call('SMEMBERS', P .. 'blk:' .. t)
        redis.call('DEL', P .. 'blk:' .. t)
        redis.call('SREM', P .. 'blocked', t)
        for _, c in ipairs(classes) do
          if redis.call('LLEN', tlist(P, c, t)) > 0 then activate(P, c, t) end
        end
        ring_bell(P)
      end
    else
      local t, k = string.match(rest, '^([^:]*):(.*)$')
      local park = P .. 'park:' .. rest
      local free = key_cap(t, k) - redis.call('SCARD', P .. 'run:k:' .. rest)
      local items = {}
      while #items < free do
        local item = redis.call('RPOP', park)
        if not item then break end
        items[#items + 1] = item
      end
      if #items > 0 then
        redis.call('HINCRBY', P .. 'parked', t, -#items)
        if redis.call('EXISTS', park) == 0 then redis.call('SREM', P .. 'parkedkeys', rest) end
        for i = #items, 1, -1 do
          local ok, msg = pcall(cjson.decode, items[i])
          local c = attributes(ok and msg or nil)
          unpark_count(P, c, t)
          push(P, c, t, items[i], true)
        end
      end
    end
  end
end

-- the tenant's list lost its last message, or the tenant left the ring: the class leaves its ring when empty
local function left(P, c)
  if redis.call('ZCARD', P .. 'ring:' .. c) == 0 then
    redis.call('ZREM', P .. 'classes', c)
  end
end

-- one pick from queue Q (prefix P): a row, RETRY (the state changed, nothing taken), or nil (no work)
local function pick(Q, P)
  local top = redis.call('ZRANGE', P .. 'classes', 0, 0, 'WITHSCORES')
  if #top == 0 then return nil end
  local c, cpass = top[1], tonumber(top[2])
  local R = P .. 'ring:' .. c
  local first = redis.call('ZRANGE', R, 0, 0, 'WITHSCORES')
  if #first == 0 then
    redis.call('ZREM', P .. 'classes', c)
    return RETRY
  end
  local t, tpass = first[1], tonumber(first[2])
  local L = tlist(P, c, t)
  local item = redis.call('LINDEX', L, -1)
  if not item then
    redis.call('ZREM', R, t)
    left(P, c)
    return RETRY
  end
  local cap = tenant_conf('mc', t)
  if cap and redis.call('SCARD', P .. 'run:t:' .. t) >= cap then
    redis.call('ZREM', R, t)
    redis.call('SADD', P .. 'blk:' .. t, c)
    redis.call('SADD', P .. 'blocked', t)
    left(P, c)
    return RETRY
  end
  local ok, msg = pcall(cjson.decode, item)
  local props = ok and type(msg) == 'table' and msg['properties']
  local tag, info = nil, nil
  if type(props) == 'table' then
    tag, info = props['delivery_tag'], props['delivery_info']
  end
  if type(tag) ~= 'string' or type(info) ~= 'table'
      or type(info['exchange']) ~= 'string' or type(info['routing_key']) ~= 'string' then
    return {L, item}
  end
  local _, _, k = attributes(msg)
  if k then
    local tk = t .. ':' .. k
    if redis.call('SCARD', P .. 'run:k:' .. tk) >= key_cap(t, k) then
      redis.call('RPOP', L)
      park(P, c, t, k, item, false)
      if redis.call('LLEN', L) == 0 then
        redis.call('ZREM', R, t)
        left(P, c)
      end
      return RETRY
    end
  end
  redis.call('RPOP', L)
  local entry = '[' .. item .. ', ' .. cjson.encode(info['exchange']) .. ', '
    .. cjson.encode(info['routing_key']) .. ']'
  redis.call('HSET', unacked, tag, entry)
  redis.call('ZADD', index, clock, tag)
  redis.call('SADD', P .. 'run:t:' .. t, tag)
  if k then redis.call('SADD', P .. 'run:k:' .. t .. ':' .. k, tag) end
  redis.call('HSET', HELD, tag, P .. '\t' .. c .. '\t' .. t .. '\t' .. (k or ''))
  -- stride: the served tenant and class move on by 1/weight; the rings' clocks follow the served
  redis.call('HSET', P .. 'vt', c, num(tpass), '_', num(cpass))
  if redis.call('LLEN', L) > 0 then
    redis.call('ZADD', R, 'XX', num(tpass + 1 / tenant_weight(t)), t)
  else
    redis.call('ZREM', R, t)
  end
  if redis.call('ZCARD', R) > 0 then
    redis.call('ZADD', P .. 'classes', 'XX', num(cpass + 1 / class_weight(c)), c)
  else
    redis.call('ZREM', P .. 'classes', c)
  end
  return {Q, item, tag}
end

local queues, order = {}, {}
for i = 1, nq do
  queues[i] = {KEYS[1 + 2 * i], KEYS[2 + 2 * i]}
  order[i] = i
end
for i = 1, nq do
  wake(queues[i][2])
  ingest(queues[i][1], queues[i][2])
end

local taken = {}
local budget = limit + 64  -- parks, blocks and stale ring entries cost a turn each: a bounded script
while #taken < limit and budget > 0 do
  budget = budget - 1
  local row, at = nil, nil
  for j = 1, nq do
    local q = queues[order[j]]
    row = pick(q[1], q[2])
    if row ~= nil then at = j break end
  end
  if row == nil then break end
  if row ~= RETRY then
    taken[#taken + 1] = row
    if #row < 3 then break end  -- unreadable: Python takes it
    if rotate then table.insert(order, table.remove(order, at)) end
  end
end

-- work left behind (past the limit, or past the budget): the next consumer with room is woken (a
-- refusal at maxmemory, possible only when nothing was written, is left to the consumers' timed sweep);
-- none left: no token either (it would wake a consumer for nothing; whatever queues or frees a slot
-- from now on rings again). The reply's last element says whether work was left (1) or not (0): a
-- consumer that took some and was told so fetches again as soon as it has room, without a wait
local more = 0
for i = 1, nq do
  local P = queues[i][2]
  if redis.call('ZCARD', P .. 'classes') > 0 then
    more = 1
    if redis.call('LLEN', P .. 'bell') == 0 then redis.pcall('LPUSH', P .. 'bell', '1') end
  else
    redis.call('DEL', P .. 'bell')
  end
end
taken[#taken + 1] = more
return taken

-- The scheduler's shared functions, prepended to every scheduling script (workers/connections/schedule.py
-- documents the layout; docs/scheduling.md the algorithm). P is a queue's key prefix, 'llmq:sched:{<queue>}:'.
--
--   P..'l:<class>:<tenant>'   list   the tenant's queued messages of a class (new at the head, next at the tail)
--   P..'ring:<class>'         zset   tenants with work in the class, scored by their pass (stride scheduling)
--   P..'classes'              zset   classes with a tenant in their ring, scored by the class's pass
--   P..'vt'                   hash   <class> -> the ring's virtual time (pass of the tenant served last);
--                                    '_' -> the same for the classes
--   P..'blk:<tenant>'         set    classes whose list waits out of the ring: the tenant runs max_concurrency
--   P..'blocked'              set    tenants with a blk set
--   P..'run:t:<tenant>'       set    delivery tags of the tenant's held (running or prefetched) messages
--   P..'run:k:<tenant>:<key>' set    the same per concurrency key
--   P..'park:<tenant>:<key>'  list   messages waiting for a slot of their concurrency key (oldest at the tail)
--   P..'parked'               hash   tenant -> messages parked; P..'parkedkeys' set of '<tenant>:<key>' with some
--   P..'parkedc'              hash   '<class><TAB><tenant>' -> messages parked (what llmq queues shows per class)
--   P..'freed'                set    'k:<tenant>:<key>' / 't:<tenant>' that freed a slot something waits for
--   P..'pending:<tenant>'     zset   job ids registered, message not pushed yet (max_queued tenants only)
--   P..'sent:<job id>'        string a producer's send of a job registered in another Redis, for 120 s (push.lua)
--   P..'bell'                 list   one token while there may be work to take: what consumers wait on
--   P..'confv'                string the configuration's version ('v' in CONF) the queue's fetches last saw
--   HELD                      hash   delivery tag -> 'P<TAB>class<TAB>tenant<TAB>key' of every held message
--   CONF                      hash   the published [scheduling] / [tenants] configuration
--
-- At maxmemory, Redis refuses a script's growing write only while the script has written nothing:
-- every path here makes a removal (RPOP, ZREM, SPOP, HDEL) its first write, so a full Redis still
-- lets messages be taken and released, never half-moved.

local CONF = 'llmq:sched:conf'
local HELD = 'llmq:sched:held'
local CLASS_WEIGHTS = {interactive = 8, normal = 4, bulk = 1}
local PENDING_S = 30  -- a registration whose message was not pushed within this long no longer counts

local function num(x)
  return string.format('%.17g', x)
end

local conf_cache = {}
local function conf(field)
  local v = conf_cache[field]
  if v == nil then
    v = redis.call('HGET', CONF, field)
    conf_cache[field] = v
  end
  return v
end

-- a tenant's setting ('w' weight, 'mc' max_concurrency, 'mq' max_queued, 'kc' key_concurrency),
-- else the '*' tenant's, else nil
local function tenant_conf(kind, t)
  local v = conf(kind .. ':' .. t) or conf(kind .. ':*')
  return v and tonumber(v) or nil
end

local function tenant_weight(t)
  return tenant_conf('w', t) or 1
end

local function class_weight(c)
  local v = conf('cw:' .. c)
  return v and tonumber(v) or CLASS_WEIGHTS[c] or 1
end

-- the cap of a concurrency key: an exact [scheduling.keys] entry, else the longest matching 'prefix*'
-- entry, else the tenant's key_concurrency, else [scheduling] key_concurrency, else 1
local function key_cap(t, k)
  local v = conf('kx:' .. k)
  if v then return tonumber(v) end
  local patterns = conf('kp')
  if patterns then
    for prefix, cap in string.gmatch(patterns, '([^\t\n]*)\t([^\n]*)\n') do
      if string.sub(k, 1, #prefix) == prefix then return tonumber(cap) end
    end
  end
  v = conf('kc:' .. t) or conf('kc:*') or conf('kc')
  return v and tonumber(v) or 1
end

local function tlist(P, c, t)
  return P .. 'l:' .. c .. ':' .. t
end

local function ring_bell(P)
  if redis.call('LLEN', P .. 'bell') == 0 then
    redis.call('LPUSH', P .. 'bell', '1')
  end
end

-- tenant t has work in class c again: into the class's ring at the ring's virtual time (it takes
-- its share from now on, with no credit for the time it had nothing queued), and the class into
-- the classes' ring likewise
local function activate(P, c, t)
  local vt = redis.call('HGET', P .. 'vt', c) or '0'
  redis.call('ZADD', P .. 'ring:' .. c, 'NX', vt, t)
  local g = redis.call('HGET', P .. 'vt', '_') or '0'
  redis.call('ZADD', P .. 'classes', 'NX', g, c)
end

-- a message onto tenant t's list of class c: at the head (new: taken after the ones queued) or at
-- the tail (restored or woken: taken next)
local function push(P, c, t, payload, at_tail)
  local n
  if at_tail then
    n = redis.call('RPUSH', tlist(P, c, t), payload)
  else
    n = redis.call('LPUSH', tlist(P, c, t), payload)
  end
  if n == 1 and redis.call('SISMEMBER', P .. 'blk:' .. t, c) == 0 then
    activate(P, c, t)
  end
  ring_bell(P)
end

local CLASSES = {interactive = true, normal = true, bulk = true}

-- the scheduling attributes of a decoded message (defaults for a message without our header)
local function attributes(msg)
  local c, t, k = 'normal', 'default', nil
  local headers = type(msg) == 'table' and msg['headers']
  local h = type(headers) == 'table' and headers['llmq']
  if type(h) == 'table' then
    if CLASSES[h['priority']] then c = h['priority'] end
    if type(h['tenant']) == 'string' and string.match(h['tenant'], '^[%w_.-]+$') then t = h['tenant'] end
    if type(h['concurrency_key']) == 'string' and string.match(h['concurrency_key'], '^%S+$') then
      k = h['concurrency_key']
    end
  end
  return c, t, k
end

-- a slot of the held message's tenant or key frees: forget it, and when something waits for that
-- slot (a blocked tenant, a parked message), leave a note for the next fetch and ring
local function release(tag)
  local h = redis.call('HGET', HELD, tag)
  if not h then return end
  redis.call('HDEL', HELD, tag)
  local P, c, t, k = string.match(h, '^([^\t]*)\t([^\t]*)\t([^\t]*)\t(.*)$')
  if not P then return end
  redis.call('SREM', P .. 'run:t:' .. t, tag)
  local waiting = false
  if redis.call('EXISTS', P .. 'blk:' .. t) == 1 then
    redis.call('SADD', P .. 'freed', 't:' .. t)
    waiting = true
  end
  if k ~= '' then
    redis.call('SREM', P .. 'run:k:' .. t .. ':' .. k, tag)
    if redis.call('EXISTS', P .. 'park:' .. t .. ':' .. k) == 1 then
      redis.call('SADD', P .. 'freed', 'k:' .. t .. ':' .. k)
      waiting = true
    end
  end
  if waiting then ring_bell(P) end
end

-- a message of class c, tenant t, concurrency key k waits for a slot of its key: onto the key's parked
-- list, at the head (taken after the ones parked) or at the tail (the oldest: woken first)
local function park(P, c, t, k, item, at_tail)
  local tk = t .. ':' .. k
  if at_tail then
    redis.call('RPUSH', P .. 'park:' .. tk, item)
  else
    redis.call('LPUSH', P .. 'park:' .. tk, item)
  end
  redis.call('SADD', P .. 'parkedkeys', tk)
  redis.call('HINCRBY', P .. 'parked', t, 1)
  redis.call('HINCRBY', P .. 'parkedc', c .. '\t' .. t, 1)
end

-- a parked message of class c, tenant t leaves its key's list: no longer counted in its class
local function unpark_count(P, c, t)
  local field = c .. '\t' .. t
  if redis.call('HINCRBY', P .. 'parkedc', field, -1) <= 0 then
    redis.call('HDEL', P .. 'parkedc', field)
  end
end

-- how many messages tenant t has queued in P (lists, parked, and registrations not pushed yet)
local function queued(P, t)
  local n = 0
  for c in pairs(CLASSES) do
    n = n + redis.call('LLEN', tlist(P, c, t))
  end
  n = n + tonumber(redis.call('HGET', P .. 'parked', t) or '0')
  return n + redis.call('ZCARD', P .. 'pending:' .. t)
end

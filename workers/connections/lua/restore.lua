-- Give a held message back to its queue (kombu's restore of a dead worker's aged entries, a requeue,
-- a give-back): release the slot its old delivery tag held, then queue it at the tail (or the head)
-- under its new tag. Runs inside kombu's restore transaction, which removes the unacked entry.
-- KEYS[1] P. ARGV[1] the payload, ARGV[2] class, ARGV[3] tenant, ARGV[4] '1' = at the tail, ARGV[5] the old tag.
-- A message whose concurrency key has parked messages goes back among them (at the tail: the oldest,
-- woken first by the slot its release frees), not behind them.
local P, t, at_tail = KEYS[1], ARGV[3], ARGV[4] == '1'
local h = redis.call('HGET', HELD, ARGV[5])
local k = h and string.match(h, '^[^\t]*\t[^\t]*\t[^\t]*\t(.*)$') or ''
release(ARGV[5])
local c = ARGV[2]
if not CLASSES[c] then c = 'normal' end
if k ~= '' and redis.call('EXISTS', P .. 'park:' .. t .. ':' .. k) == 1 then
  park(P, c, t, k, ARGV[1], at_tail)
  ring_bell(P)
else
  push(P, c, t, ARGV[1], at_tail)
end
return 1

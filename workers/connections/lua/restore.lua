-- Give a held message back to its queue (kombu's restore of a dead worker's aged entries, a requeue,
-- a give-back): release the slot its old delivery tag held, then queue it at the tail (or the head)
-- under its new tag. Runs inside kombu's restore transaction, which removes the unacked entry.
-- KEYS[1] P. ARGV[1] the payload, ARGV[2] class, ARGV[3] tenant, ARGV[4] '1' = at the tail, ARGV[5] the old tag.
release(ARGV[5])
local c = ARGV[2]
if not CLASSES[c] then c = 'normal' end
push(KEYS[1], c, ARGV[3], ARGV[1], ARGV[4] == '1')
return 1

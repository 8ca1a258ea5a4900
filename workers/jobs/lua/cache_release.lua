-- End a lead without storing an answer (the call failed, was cancelled, or is not cacheable).
-- KEYS: [1] the lead. ARGV: [1] the job id it must still name. Returns 1 if it was deleted.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0

-- Register a job (register_lib.lua); its message is sent after, by the producer's transport (push.lua).
-- KEYS[1] the job's meta, KEYS[2] the queue's prefix P ('' when the queue is not in this Redis).
-- ARGV[1] tenant, ARGV[2] submitted_at, ARGV[3] meta TTL, ARGV[4] resend_after_s, ARGV[5] the job id.
return register_job(KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5])

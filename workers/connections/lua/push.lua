-- Queue one message (push_lib.lua). KEYS[1] the queue's prefix P, KEYS[2] its job's metadata hash
-- (P again for a message without a job id). ARGV[1] the payload as kombu serialized it, ARGV[2] its
-- class, ARGV[3] its tenant, ARGV[4] '1' to put it at the tail else at the head, ARGV[5] its job id
-- ('' if none), ARGV[6] the queue's name, ARGV[7] '1' for a producer's send of a registered job.
return push_job(KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[3], ARGV[4] == '1', ARGV[5], ARGV[6], ARGV[7] == '1')

-- Ends a run that seeded the key-id set from the store. Marks the set seeded (and gives it a
-- lifetime, after which it is seeded anew) only if the lock is still this run's: otherwise
-- Redis lost it (flushed, evicted or expired) after the store was read, and the set may miss
-- an id added meanwhile.
-- KEYS[1] the key-id set   KEYS[2] the seeding lock
-- ARGV: the lock's token, the "seeded" marker member, '1' to mark it seeded (else only let
-- go of the lock), the set's lifetime in seconds
if redis.call('GET', KEYS[2]) ~= ARGV[1] then
  return 0
end
redis.call('DEL', KEYS[2])
if ARGV[3] == '1' then
  redis.call('SADD', KEYS[1], ARGV[2])
  redis.call('EXPIRE', KEYS[1], ARGV[4])
end
return 1

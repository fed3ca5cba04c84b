-- Seed a key's state stamp from the store when Redis has none (new key, restart, eviction),
-- and return the stamp in force: a caller whose store read is older sees a different one.
-- A stamp that no store version matches (a publish that failed after its store write) is
-- replaced when the caller names it, read twice from an unchanged store.
-- KEYS[1] state stamp; ARGV[1] the stamp the caller read from the store; ARGV[2] stale stamp.
local current = redis.call('GET', KEYS[1])
if not current or (ARGV[2] ~= '' and current == ARGV[2]) then
  redis.call('SET', KEYS[1], ARGV[1])
  return ARGV[1]
end
return current

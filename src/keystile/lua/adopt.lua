-- Seed a key's state stamp from the store when Redis has none (new key, restart, eviction),
-- and return the stamp in force: a caller whose store read is older sees a different one.
-- KEYS[1] state stamp; ARGV[1] the stamp the caller read from the store.
local current = redis.call('GET', KEYS[1])
if not current then
  redis.call('SET', KEYS[1], ARGV[1])
  return ARGV[1]
end
return current

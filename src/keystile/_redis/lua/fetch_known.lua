-- The slow path's first Redis call for an API key (not a session): the credential's shared
-- snapshot, and whether its key id exists at all. An id the seeded set does not hold is
-- refused without reading the snapshot.
-- KEYS[1] the credential's snapshot   KEYS[2] the key-id set
-- ARGV: the key id, the "seeded" marker member
-- Returns {0, 1} for an unknown id of a seeded set, else {member, seeded, snapshot or nil}.
-- (The two keys have different hash tags: on Redis Cluster both must live on one node.)
local known = redis.call('SMISMEMBER', KEYS[2], ARGV[1], ARGV[2])
if known[2] == 1 and known[1] == 0 then
  return {0, 1}
end
return {known[1], known[2], redis.call('GET', KEYS[1])}

-- Strict mode, at each flush: make the counter hold every page this process charged and has not
-- yet written to the store. Its 'p:<holder>' field says how many of those the counter holds
-- (meter.lua, settle.lua and resolve.lua keep it, in the same step as 'pages'); fewer means
-- the counter lost some: a failover lost the last writes, or Redis lost the counter and
-- another process rebuilt it from the store. They are added back, so no counter keeps
-- missing another process's charges. Never taken away: a charge still on its way back to
-- this process is in the field already but not yet in its count.
-- KEYS[1] usage hash   KEYS[2] this call's marker (once.lua: a 'written' sent again after a
-- lost reply must not take the pages off twice)
-- ARGV: retry ('1'), marker ttl (once.lua), then
--   'reconcile', holder, pages not yet in the store
--    -> {'lost'} (no counter: the next request rebuilds it) or {'ok', generation, pages added}
--   'written', holder, pages just written to the store, generation 'reconcile' returned
--    -> 1, or 0 when the counter was rebuilt since (its field counts only what came after)
local usage, mode, field = KEYS[1], ARGV[3], 'p:' .. ARGV[4]
local pages = tonumber(ARGV[5])
if mode == 'reconcile' then
  if redis.call('EXISTS', usage) == 0 then return {'lost'} end
  local missing = pages - (tonumber(redis.call('HGET', usage, field)) or 0)
  if missing > 0 then
    redis.call('HINCRBY', usage, 'pages', missing)
    redis.call('HINCRBY', usage, field, missing)
  else
    missing = 0
  end
  return once({'ok', redis.call('HGET', usage, 'gen') or '0', missing})
end
if (redis.call('HGET', usage, 'gen') or '0') ~= ARGV[6] then return once(0) end
if redis.call('HINCRBY', usage, field, -pages) == 0 then redis.call('HDEL', usage, field) end
return once(1)

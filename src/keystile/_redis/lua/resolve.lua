-- A charge whose meter call got no reply, even when sent again: was it counted? The call's
-- marker (once.lua) tells. The request was refused ('cancel': take the charge back if the call
-- ran) or admitted without Redis ('ensure': charge it if the call did not run). The marker
-- then says 'resolved', so sending this again changes nothing.
-- KEYS[1] usage hash   KEYS[2] idempotency marker (or KEYS[1])   KEYS[3] the call's marker
-- ARGV: 'cancel' or 'ensure', marker ttl (s), kid, pages, requests, the counter's generation
-- when the charge was made ('' = unknown), holder ('' = none; see meter.lua)
-- Returns the sign of the change made: -1, 0 or 1.
local usage, idem, marker = KEYS[1], KEYS[2], KEYS[3]
local mode, ttl, kid = ARGV[1], ARGV[2], ARGV[3]
local pages, requests, gen, holder = tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6], ARGV[7]
local seen = redis.call('GET', marker)
if seen == '"resolved"' then return 0 end
if gen ~= '' and (redis.call('HGET', usage, 'gen') or '0') ~= gen then
  -- Rebuilt since (Redis lost it): from the store, which holds the admitted charges written
  -- before the rebuild. Those written after are the documented window; nothing to fix here.
  redis.call('SET', marker, '"resolved"', 'EX', ttl)
  return 0
end
local sign = 0
if seen and mode == 'cancel' then
  sign = -1
  if idem ~= usage then redis.call('DEL', idem) end  -- its retry is charged anew
elseif not seen and mode == 'ensure' then
  sign = 1
end
-- A lost counter is rebuilt from the store, which has exactly the admitted charges.
if sign ~= 0 and redis.call('EXISTS', usage) == 1 then
  redis.call('HINCRBY', usage, 'pages', sign * pages)
  redis.call('HINCRBY', usage, 'k:' .. kid .. ':pages', sign * pages)
  if holder ~= '' then redis.call('HINCRBY', usage, 'p:' .. holder, sign * pages) end
  if requests ~= 0 then
    redis.call('HINCRBY', usage, 'requests', sign * requests)
    redis.call('HINCRBY', usage, 'k:' .. kid .. ':requests', sign * requests)
  end
end
redis.call('SET', marker, '"resolved"', 'EX', ttl)
return sign

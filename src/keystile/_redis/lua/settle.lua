-- After the response: add the difference between the real cost and the reservation
-- (negative for a refund), and forget the idempotency marker of a refunded request so that
-- its retry is charged. A lost counter is not recreated half-empty: the store has the delta.
-- KEYS[1] usage hash   KEYS[2] idempotency marker (or KEYS[1])   KEYS[3] this call's marker
-- ARGV: retry ('1'), marker ttl (once.lua), kid, page delta, forget idempotency ('1'), holder
-- ('' = none; see meter.lua)
local pages, holder = tonumber(ARGV[4]), ARGV[6]
if pages ~= 0 and redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('HINCRBY', KEYS[1], 'pages', pages)
  redis.call('HINCRBY', KEYS[1], 'k:' .. ARGV[3] .. ':pages', pages)
  if holder ~= '' then redis.call('HINCRBY', KEYS[1], 'p:' .. holder, pages) end
end
if ARGV[5] == '1' and KEYS[2] ~= KEYS[1] then redis.call('DEL', KEYS[2]) end
return once(1)

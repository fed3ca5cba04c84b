-- After the response: add the difference between the real cost and the reservation
-- (negative for a refund), and forget the idempotency marker of a refunded request so that
-- its retry is charged. Also adds requests admitted while Redis was down (reconciliation).
-- A lost counter is not recreated half-empty: the store has the delta.
-- KEYS[1] usage hash   KEYS[2] idempotency marker (or KEYS[1])
-- ARGV: kid, page delta, forget idempotency ('1'), request delta
if redis.call('EXISTS', KEYS[1]) == 1 then
  local pages, requests = tonumber(ARGV[2]), tonumber(ARGV[4] or '0')
  if pages ~= 0 then
    redis.call('HINCRBY', KEYS[1], 'pages', pages)
    redis.call('HINCRBY', KEYS[1], 'k:' .. ARGV[1] .. ':pages', pages)
  end
  if requests ~= 0 then
    redis.call('HINCRBY', KEYS[1], 'requests', requests)
    redis.call('HINCRBY', KEYS[1], 'k:' .. ARGV[1] .. ':requests', requests)
  end
end
if ARGV[3] == '1' and KEYS[2] ~= KEYS[1] then redis.call('DEL', KEYS[2]) end
return 1

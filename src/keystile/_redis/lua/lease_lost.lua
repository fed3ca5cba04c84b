-- "Fast" mode: a lease call whose reply was lost twice. If it ran, its holder has pages in its
-- lease that it never learned of, and its reports would keep them alive (outstanding, so no
-- other holder gets them): give them back. Only while the holder's lease is the one the
-- grant went into: a lease swept since (forgiven) and made anew holds none of them, and
-- taking pages from it would take pages the holder knows it has.
--
-- KEYS[1] usage hash   KEYS[2] leases hash   KEYS[3] the lost call's marker (once.lua)
-- ARGV[1] holder
-- Returns {'unseen'} (it did not run, or the marker is gone), {'kept'} (nothing to give back)
-- or {'returned', pages}. The marker goes: asking again answers 'unseen', so nothing comes
-- off twice.
local usage, leases, marker, holder = KEYS[1], KEYS[2], KEYS[3], ARGV[1]
local seen = redis.call('GET', marker)
if not seen then return {'unseen'} end
redis.call('DEL', marker)
local reply = cjson.decode(seen)
local grant = tonumber(reply[2]) or 0
if reply[1] ~= 'ok' or grant <= 0 or not reply[7] then return {'kept'} end
local value = redis.call('HGET', leases, holder)
if not value then return {'kept'} end
local out, expiry, born = string.match(value, '^(%d+):(%d+):?(%d*)$')
if born ~= reply[7] or redis.call('EXISTS', usage) == 0 then return {'kept'} end
local back = math.min(grant, tonumber(out))
if back <= 0 then return {'kept'} end
if tonumber(out) > back then
  redis.call('HSET', leases, holder, string.format('%d:%s:%s', tonumber(out) - back, expiry, born))
else
  redis.call('HDEL', leases, holder)
end
redis.call('HINCRBY', usage, 'pages', string.format('%d', -back))
return {'returned', back}

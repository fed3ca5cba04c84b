-- "Fast" mode: a holder reports what it spent out of its lease and gives unused pages back.
-- Leased pages are already in 'pages', so spending a lease adds nothing; a returned page
-- comes off. What the lease in Redis no longer covers (it expired and was swept, forgiving
-- it; or the counter was rebuilt) was real spending and is added back, so nothing is lost
-- or counted twice. A lost counter is not recreated half-empty: the store has the charges.
--
-- KEYS[1] usage hash   KEYS[2] leases hash (holder -> '<outstanding>:<expiry ms>:<born us>')
-- KEYS[3] this call's marker (once.lua)
-- ARGV: retry ('1'), marker ttl (once.lua), holder, spent (>= 0), returned (>= 0), extra
-- (pages beyond any lease, any sign),
-- keep ('1': refresh the lease's expiry), lease ttl (ms), requests, then kid, pages, requests
-- for each key.
-- Returns {'ok', pages after, 1 if the holder still had a lease here else 0} or {'lost'}.
local usage, leases = KEYS[1], KEYS[2]
local holder = ARGV[3]
local spent, returned, extra = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local keep, lease_ttl, requests = ARGV[7] == '1', tonumber(ARGV[8]), tonumber(ARGV[9])

if redis.call('EXISTS', usage) == 0 then return {'lost'} end

local value = redis.call('HGET', leases, holder)
local held, expiry, born = 0, '0', ''
if value then
  local out, at, since = string.match(value, '^(%d+):(%d+):?(%d*)$')
  held, expiry, born = tonumber(out), at, since
end
local covered = math.min(spent, held)
held = held - covered
local back = math.min(returned, held)
held = held - back
if value then
  if held > 0 then
    -- Still outstanding, even without keep: a grant that raced this report is in it.
    if keep then
      local clock = redis.call('TIME')
      expiry = string.format('%d', tonumber(clock[1]) * 1000
        + math.floor(tonumber(clock[2]) / 1000) + lease_ttl)
    end
    redis.call('HSET', leases, holder, string.format('%d:%s:%s', held, expiry, born))
  else
    redis.call('HDEL', leases, holder)
  end
end

local after = redis.call('HINCRBY', usage, 'pages',
  string.format('%d', spent - covered - back + extra))
if requests ~= 0 then redis.call('HINCRBY', usage, 'requests', requests) end
for i = 10, #ARGV, 3 do
  local kid, key_pages, key_requests = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  if key_pages ~= '0' then redis.call('HINCRBY', usage, 'k:' .. kid .. ':pages', key_pages) end
  if key_requests ~= '0' then
    redis.call('HINCRBY', usage, 'k:' .. kid .. ':requests', key_requests)
  end
end
return once({'ok', after, value and 1 or 0})

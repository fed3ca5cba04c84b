-- One request's whole Redis step: is the key's cached state current, is it within its rate
-- limit, is there quota left, charge it. Atomic, so concurrent requests can never admit more
-- than the limits. Eight commands on the warm path: MGET, HMGET, five HINCRBY, the SET of
-- once.lua's marker; three more (TIME, GET, SET) for a key with a rate limit.
--
-- KEYS[1] usage hash of (account, period, environment)   KEYS[2] the limit in force
-- KEYS[3] idempotency marker   KEYS[4] the key's state stamp   KEYS[5] the key's next-free
-- time under its rate limit (GCRA, µs)   KEYS[6] this call's marker
-- (KEYS[3], KEYS[4] and KEYS[5] repeat KEYS[1] when unused: every key stays in one slot.)
-- ARGV: retry ('1'), marker ttl (once.lua), then kid, cost, expected stamp ('' = no check),
-- key limit (''), limit to seed ('' = none known, 'none' = unlimited), usage to rebuild
-- (JSON, ''), usage ttl, thresholds in basis points ('8000,10000': integer maths, so 55% of
-- 100 is exactly 55), idempotency ttl, limit ttl, use idempotency ('1'), count the request ('1'),
-- holder ('' = none: fast mode): the field 'p:<holder>' sums the pages this process has charged
-- and not yet written to the store (pending.lua); the rate limit's interval and burst (µs, ''
-- = none): a request may go while the key's next-free time is within a burst of now.
local usage, limit_key, idem_key, state_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local kid, cost, expected = ARGV[3], tonumber(ARGV[4]), ARGV[5]
local key_limit, seed_limit, rebuild = ARGV[6], ARGV[7], ARGV[8]
local usage_ttl, thresholds, idem_ttl, limit_ttl = ARGV[9], ARGV[10], ARGV[11], ARGV[12]
local use_idem, count_request = ARGV[13] == '1', ARGV[14] == '1'
local holder = ARGV[15]
local rate_key, interval, burst = KEYS[5], tonumber(ARGV[16]), tonumber(ARGV[17])

local limit
if expected ~= '' then
  local got = redis.call('MGET', state_key, limit_key)
  if got[1] ~= expected then return {'stale'} end
  limit = got[2]
else
  limit = redis.call('GET', limit_key)
end
limit = limit_in_force(limit, limit_key, seed_limit, limit_ttl)
if not limit then return {'need_limit'} end
local lim = tonumber(limit)  -- nil: unlimited, still metered

local marks = {}
for t in string.gmatch(thresholds, '[^,]+') do table.insert(marks, t) end
local key_pages = 'k:' .. kid .. ':pages'
local fields = {'pages', key_pages, 'gen'}
for _, t in ipairs(marks) do table.insert(fields, 'th:' .. t) end

local got = redis.call('HMGET', usage, unpack(fields))
if not got[1] then
  -- New period, or Redis lost the counter: start from what the store has recorded. A new
  -- generation ('gen', as lease.lua's) tells what was charged before it from what after.
  if rebuild == '' then return {'need_usage'} end
  for field, value in pairs(cjson.decode(rebuild)) do
    redis.call('HSET', usage, field, value)
  end
  redis.call('HSETNX', usage, 'pages', 0)
  local clock = redis.call('TIME')
  redis.call('HSET', usage, 'gen', clock[1] .. string.format('%06d', tonumber(clock[2])))
  if lim and lim > 0 then
    local pages = tonumber(redis.call('HGET', usage, 'pages'))
    for _, t in ipairs(marks) do
      if pages * 10000 >= tonumber(t) * lim then redis.call('HSET', usage, 'th:' .. t, 1) end
    end
  end
  redis.call('EXPIRE', usage, usage_ttl)
  got = redis.call('HMGET', usage, unpack(fields))
end

local used = tonumber(got[1])
if use_idem and redis.call('EXISTS', idem_key) == 1 then
  return {'replay', used, lim or -1}
end
local ahead
if interval then
  local clock = redis.call('TIME')
  local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
  local free = tonumber(redis.call('GET', rate_key) or '0')
  ahead = math.max(free, now) + interval - now
  if ahead > burst then return {'rate', used, lim or -1, ahead - burst} end
  ahead = {now + ahead, ahead}
end
if lim and used + cost > lim then
  return {'exceeded', used, lim, 'account'}
end
if key_limit ~= '' then
  local key_used = tonumber(got[2] or '0')
  if key_used + cost > tonumber(key_limit) then
    return {'exceeded', key_used, tonumber(key_limit), 'key'}
  end
end

if ahead then
  redis.call('SET', rate_key, string.format('%.0f', ahead[1]), 'PX', math.ceil(ahead[2] / 1000))
end
local after = redis.call('HINCRBY', usage, 'pages', cost)
redis.call('HINCRBY', usage, key_pages, cost)
if holder ~= '' then redis.call('HINCRBY', usage, 'p:' .. holder, cost) end
if count_request then
  redis.call('HINCRBY', usage, 'requests', 1)
  redis.call('HINCRBY', usage, 'k:' .. kid .. ':requests', 1)
end
if use_idem then redis.call('SET', idem_key, '1', 'EX', idem_ttl) end

local crossed = {}
if lim and lim > 0 then
  for i, t in ipairs(marks) do
    -- got[3 + i]: whether this period already announced the threshold (read above).
    if not got[3 + i] and after * 10000 >= tonumber(t) * lim then
      redis.call('HSET', usage, 'th:' .. t, 1)
      table.insert(crossed, t)
    end
  end
end
local rated = {}
if ahead then rated = {math.floor((burst - ahead[2]) / interval), ahead[2]} end
return once({'ok', after, lim or -1, table.concat(crossed, ','), got[3] or '0', unpack(rated)})

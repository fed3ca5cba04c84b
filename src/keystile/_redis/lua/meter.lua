-- One request's whole Redis step: is the key's cached state current, is it within its rate
-- limits, is there quota left, charge it. Atomic, so concurrent requests can never admit more
-- than the limits. Four commands on the warm path: MGET, HMGET, one HSET of every counter the
-- charge moves, the SET of once.lua's marker; with rate limits, TIME, and a GET and a SET
-- for each.
--
-- KEYS[1] usage hash of (account, period, environment)
-- KEYS[2] the limit in force: '<pages>' or 'none', then ';<count>;<period s>' when the
-- account has a rate limit of its own   KEYS[3] idempotency marker   KEYS[4] the key's state
-- stamp   KEYS[5] the key's next-free time under its rate limit (GCRA, µs)   KEYS[6] the
-- account's, in this environment   KEYS[7] this call's marker
-- (KEYS[3], KEYS[4] and KEYS[5] repeat KEYS[1] when unused: every key stays in one slot.)
-- ARGV: retry ('1'), marker ttl (once.lua), then kid, cost, expected stamp ('' = no check),
-- key limit (''), limit to seed ('' = none known, 'none' = unlimited), usage to rebuild
-- (JSON, ''), usage ttl, thresholds in basis points ('8000,10000': integer maths, so 55% of
-- 100 is exactly 55), idempotency ttl, limit ttl, use idempotency ('1'), count the request ('1'),
-- holder ('' = none: fast mode): the field 'p:<holder>' sums the pages this process has charged
-- and not yet written to the store (pending.lua); the key's rate limit, count and period (s)
-- ('' = none). A GCRA: a request may go while the next-free time is within a burst
-- (count x interval) of now; it moves the time on by one interval (period / count, rounded up).
local usage, limit_key, idem_key, state_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local kid, cost, expected = ARGV[3], tonumber(ARGV[4]), ARGV[5]
local key_limit, seed_limit, rebuild = ARGV[6], ARGV[7], ARGV[8]
local usage_ttl, thresholds, idem_ttl, limit_ttl = ARGV[9], ARGV[10], ARGV[11], ARGV[12]
local use_idem, count_request = ARGV[13] == '1', ARGV[14] == '1'
local holder = ARGV[15]

-- A rate limit: {which, count, period, its next-free key, interval, burst}.
local function rate_of(which, count, period, key)
  local interval = math.ceil(period * 1000000 / count)
  return {which, count, period, key, interval, interval * count}
end
local rates = {}
if count_request and ARGV[16] ~= '' then
  rates[1] = rate_of('k', tonumber(ARGV[16]), tonumber(ARGV[17]), KEYS[5])
end

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
local pages_text, a_count, a_period = string.match(limit, '^([^;]*);(%d+);(%d+)$')
if pages_text then
  limit = pages_text
  if count_request then
    rates[#rates + 1] = rate_of('a', tonumber(a_count), tonumber(a_period), KEYS[6])
  end
end
local lim = tonumber(limit)  -- nil: unlimited, still metered

-- Every field the charge changes is read here and written back by one HSET: inside the
-- script nothing runs in between, and one command costs less than five HINCRBY.
local key_pages, key_requests = 'k:' .. kid .. ':pages', 'k:' .. kid .. ':requests'
local pending = holder ~= '' and 'p:' .. holder or 'pages'
local fields = {'pages', key_pages, 'gen', 'requests', key_requests, pending}
local marks = threshold_marks(fields, lim, thresholds)

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
local now
if #rates > 0 then
  local clock = redis.call('TIME')
  now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
end
for _, r in ipairs(rates) do
  local free = tonumber(redis.call('GET', r[4]) or '0')
  local ahead = math.max(free, now) + r[5] - now
  if ahead > r[6] then return {'rate', used, lim or -1, ahead - r[6], r[1], r[2], r[3]} end
  r[7] = ahead
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

local rated = {}
for _, r in ipairs(rates) do
  redis.call('SET', r[4], string.format('%.0f', now + r[7]), 'PX', math.ceil(r[7] / 1000))
  for _, v in ipairs({r[1], r[2], r[3], math.floor((r[6] - r[7]) / r[5]), r[7]}) do
    rated[#rated + 1] = v
  end
end
local after = used + cost
local writes = {'pages', after, key_pages, (tonumber(got[2]) or 0) + cost}
if holder ~= '' then
  writes[5], writes[6] = pending, (tonumber(got[6]) or 0) + cost
end
if count_request then
  local n = #writes
  writes[n + 1], writes[n + 2] = 'requests', (tonumber(got[4]) or 0) + 1
  writes[n + 3], writes[n + 4] = key_requests, (tonumber(got[5]) or 0) + 1
end
local crossed = {}
for i, t in ipairs(marks) do
  -- got[6 + i]: whether this period already announced the threshold (read above).
  if not got[6 + i] and after * 10000 >= tonumber(t) * lim then
    writes[#writes + 1], writes[#writes + 2] = 'th:' .. t, 1
    crossed[#crossed + 1] = t
  end
end
redis.call('HSET', usage, unpack(writes))
if use_idem then redis.call('SET', idem_key, '1', 'EX', idem_ttl) end
return once({'ok', after, lim or -1, table.concat(crossed, ','), got[3] or '0', unpack(rated)})

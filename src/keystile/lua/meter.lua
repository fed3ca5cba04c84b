-- One request's whole Redis step: is the key's cached state current, is there quota left,
-- charge it. Atomic, so concurrent requests can never admit more than the limit.
--
-- KEYS[1] usage hash of (account, period, environment)   KEYS[2] the limit in force
-- KEYS[3] idempotency marker   KEYS[4] the key's state stamp
-- (KEYS[3] and KEYS[4] repeat KEYS[1] when unused: every key named stays in one slot.)
-- ARGV: kid, cost, expected stamp ('' = no check), key limit (''), limit to seed ('' = none
-- known, 'none' = unlimited), usage to rebuild (JSON, ''), usage ttl, thresholds in basis points
-- ('8000,10000': integer maths, so 55% of 100 is exactly 55),
-- idempotency ttl, limit ttl, use idempotency ('1'), count the request ('1')
local usage, limit_key, idem_key, state_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local kid, cost, expected = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local key_limit, seed_limit, rebuild = ARGV[4], ARGV[5], ARGV[6]
local usage_ttl, thresholds, idem_ttl, limit_ttl = ARGV[7], ARGV[8], ARGV[9], ARGV[10]
local use_idem, count_request = ARGV[11] == '1', ARGV[12] == '1'

if expected ~= '' and redis.call('GET', state_key) ~= expected then
  return {'stale'}
end

local limit = redis.call('GET', limit_key)
if not limit then
  if seed_limit == '' then return {'need_limit'} end
  redis.call('SET', limit_key, seed_limit, 'EX', limit_ttl)
  limit = seed_limit
end
local lim = tonumber(limit)  -- nil: unlimited, still metered

if redis.call('EXISTS', usage) == 0 then
  -- New period, or Redis lost the counter: start from what the store has recorded.
  if rebuild == '' then return {'need_usage'} end
  for field, value in pairs(cjson.decode(rebuild)) do
    redis.call('HSET', usage, field, value)
  end
  redis.call('HSETNX', usage, 'pages', 0)
  if lim and lim > 0 then
    local pages = tonumber(redis.call('HGET', usage, 'pages'))
    for t in string.gmatch(thresholds, '[^,]+') do
      if pages * 10000 >= tonumber(t) * lim then redis.call('HSET', usage, 'th:' .. t, 1) end
    end
  end
  redis.call('EXPIRE', usage, usage_ttl)
end

local used = tonumber(redis.call('HGET', usage, 'pages') or '0')
if use_idem and redis.call('EXISTS', idem_key) == 1 then
  return {'replay', used, lim or -1}
end
if lim and used + cost > lim then
  return {'exceeded', used, lim, 'account'}
end
local key_pages = 'k:' .. kid .. ':pages'
if key_limit ~= '' then
  local key_used = tonumber(redis.call('HGET', usage, key_pages) or '0')
  if key_used + cost > tonumber(key_limit) then
    return {'exceeded', key_used, tonumber(key_limit), 'key'}
  end
end

local after = redis.call('HINCRBY', usage, 'pages', cost)
redis.call('HINCRBY', usage, key_pages, cost)
if count_request then
  redis.call('HINCRBY', usage, 'requests', 1)
  redis.call('HINCRBY', usage, 'k:' .. kid .. ':requests', 1)
end
if use_idem then redis.call('SET', idem_key, '1', 'EX', idem_ttl) end

local crossed = {}
if lim and lim > 0 then
  for t in string.gmatch(thresholds, '[^,]+') do
    if after * 10000 >= tonumber(t) * lim and redis.call('HSETNX', usage, 'th:' .. t, 1) == 1 then
      table.insert(crossed, t)
    end
  end
end
return {'ok', after, lim or -1, table.concat(crossed, ',')}

-- "Fast" mode: take a block of pages from an account's counter for one process to spend
-- locally. The counter's 'pages' includes every page leased out, so the leases never add up
-- to more than the limit: no request is admitted past it. Grants shrink as the limit nears.
--
-- KEYS[1] usage hash of (account, period, environment)   KEYS[2] the limit in force
-- KEYS[3] leases hash: holder -> '<outstanding pages>:<expiry, server ms>:<born, server us>'
-- (born: when the field was made; a field swept and made anew has a later one)
-- KEYS[4] this call's marker (once.lua)
-- ARGV: retry ('1'), marker ttl (once.lua), holder, want, limit to seed ('' = none known, 'none' = unlimited), usage to rebuild
-- (JSON, ''), usage ttl (s), limit ttl (s), lease ttl (ms), thresholds in basis points
-- ('8000,10000'), spread (>= 1: a grant takes at most 1/spread of what is left),
-- need (pages the caller's request still lacks; fewer left = exceeded)
-- Returns {'ok', grant, pages after, limit or -1, crossed thresholds CSV, generation, born,
-- the account's rate count and period ('' when none)}, {'exceeded', pages, limit},
-- {'need_limit'} or {'need_usage'}. The generation ('gen', set
-- when this script rebuilds the hash; '0' if it never did) tells a holder that leases it
-- got from an earlier hash are void.
-- Common path: GET, TIME, HMGET, HGETALL, HSET usage, HSET leases, SET marker (7 calls).
local usage, limit_key, leases = KEYS[1], KEYS[2], KEYS[3]
local holder, want = ARGV[3], tonumber(ARGV[4])
local seed_limit, rebuild = ARGV[5], ARGV[6]
local usage_ttl, limit_ttl, lease_ttl = ARGV[7], ARGV[8], tonumber(ARGV[9])
local thresholds, spread = ARGV[10], math.max(1, tonumber(ARGV[11]) or 1)
local need = tonumber(ARGV[12])

local limit = limit_in_force(redis.call('GET', limit_key), limit_key, seed_limit, limit_ttl)
if not limit then return {'need_limit'} end
-- An account with a rate limit of its own ('<pages>;<count>;<period>'): the grant says which,
-- and the holder reserves requests under it with rate_lease.lua.
local pages_text, a_count, a_period = string.match(limit, '^([^;]*);(%d+);(%d+)$')
if pages_text then limit = pages_text end
local lim = tonumber(limit)  -- nil: unlimited, still metered
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)

-- One read for the count and every threshold mark. 'pages' is set whenever the hash exists
-- (rebuilds write it), so a missing 'pages' is a missing hash.
local fields = {'pages', 'gen'}
local points = threshold_marks(fields, lim, thresholds)
local got = redis.call('HMGET', usage, unpack(fields))
local pages, gen = tonumber(got[1]), got[2] or '0'

if not pages then
  -- New period, or Redis lost the counter: start from what the store has recorded.
  if rebuild == '' then return {'need_usage'} end
  local stored = cjson.decode(rebuild)
  for field, value in pairs(stored) do
    redis.call('HSET', usage, field, value)
  end
  pages = tonumber(stored.pages) or 0
  gen = clock[1] .. string.format('%06d', tonumber(clock[2]))
  redis.call('HSET', usage, 'pages', string.format('%d', pages), 'gen', gen)
  for i, t in ipairs(points) do
    -- Thresholds the stored usage already passed were announced before.
    if pages * 10000 >= tonumber(t) * lim then
      redis.call('HSET', usage, 'th:' .. t, 1)
      got[i + 2] = '1'
    end
  end
  redis.call('EXPIRE', usage, usage_ttl)
  -- Leases taken from the lost counter are void: the rebuilt one never counted them. Their
  -- holders' later reports find no lease and add what they really spent.
  redis.call('DEL', leases)
end

-- Sweep the expired leases of other holders: presumed dead, their unreported spending is
-- forgiven (it goes to the customer). This holder's own lease is alive: it is asking.
local held, born, forgiven, dead = 0, '', 0, {}
local all = redis.call('HGETALL', leases)
for i = 1, #all, 2 do
  local out, expiry, since = string.match(all[i + 1], '^(%d+):(%d+):?(%d*)$')
  if all[i] == holder then
    held, born = tonumber(out), since
  elseif tonumber(expiry) <= now then
    forgiven = forgiven + tonumber(out)
    dead[#dead + 1] = all[i]
  end
end
if #dead > 0 then redis.call('HDEL', leases, unpack(dead)) end
local fresh = #all == 2 * #dead  -- no lease survives: the hash is (re)created without a ttl
pages = pages - forgiven

local grant = math.max(want, need)
if lim then
  local available = lim - pages
  if need > 0 and available < need then
    if forgiven > 0 then redis.call('HSET', usage, 'pages', string.format('%d', pages)) end
    return once({'exceeded', pages, lim})
  end
  -- Near the limit grants shrink to single pages, so one holder cannot strand the rest.
  grant = math.max(need, math.min(want, math.floor(available / spread)))
end

local after = pages + grant
local writes, crossed = {'pages', string.format('%d', after)}, {}
for i, t in ipairs(points) do
  if not got[i + 2] and after * 10000 >= tonumber(t) * lim then
    writes[#writes + 1] = 'th:' .. t
    writes[#writes + 1] = 1
    crossed[#crossed + 1] = t
  end
end
if grant > 0 or forgiven > 0 or #crossed > 0 then redis.call('HSET', usage, unpack(writes)) end
if grant > 0 then
  if born == '' then born = clock[1] .. string.format('%06d', tonumber(clock[2])) end
  redis.call('HSET', leases, holder,
    string.format('%d:%d:%s', held + grant, now + lease_ttl, born))
  if fresh then redis.call('EXPIRE', leases, usage_ttl) end
end
return once({'ok', grant, after, lim or -1, table.concat(crossed, ','), gen, born,
  a_count or '', a_period or ''})
